"""A session's outgoing frames, bounded in bytes: what a slow client can make us hold.

The core's events are encoded and queued here by the (synchronous) pump; one writer task
sends them in order. Producers wait for room before they make more: the read loop before
it takes the next client frame, the backends before their next chunk. So a client that
stops reading stops its session's work, and its transceiver holds at most the high-water
mark plus the output of one step (one client event, one backend chunk), the way
``websockets`` bounds a connection's buffers (``max_queue``, ``write_limit``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

HIGH_WATER_BYTES = 1024 * 1024
HIGH_WATER_FRAMES = 64


@dataclass(frozen=True)
class CloseMarker:
    """Close the connection once everything queued before it is sent."""

    code: int
    reason: str


class Outbox:
    def __init__(
        self, high_water_bytes: int = HIGH_WATER_BYTES, high_water_frames: int = HIGH_WATER_FRAMES
    ) -> None:
        self._high_bytes = high_water_bytes
        self._high_frames = high_water_frames
        self._frames: deque[str | CloseMarker | None] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()  # something to send
        self._room = asyncio.Event()  # below the low-water mark: producers may go on
        self._room.set()
        self._closed = False

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: str | CloseMarker | None) -> None:
        """Queue a frame (``None`` ends the writer). Never waits: call ``room()`` after.
        Once the outbox is closed, frames are dropped: there is nobody to send them to."""
        if self._closed:
            return
        self._frames.append(frame)
        if isinstance(frame, str):
            self._bytes += len(frame)
        self._ready.set()
        if self._bytes > self._high_bytes or len(self._frames) > self._high_frames:
            self._room.clear()

    async def get(self) -> str | CloseMarker | None:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        if isinstance(frame, str):
            self._bytes -= len(frame)
        if self._bytes <= self._high_bytes // 2 and len(self._frames) <= self._high_frames // 2:
            self._room.set()
        return frame

    @property
    def has_room(self) -> bool:
        """Whether a producer may go on now (``room()`` would not wait)."""
        return self._room.is_set()

    async def room(self) -> None:
        """Wait until the writer has brought the queue below its low-water mark (or the
        outbox is closed)."""
        await self._room.wait()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """The writer is gone (the connection ended): drop what is queued and never make a
        producer wait again."""
        self._closed = True
        self._frames.clear()
        self._bytes = 0
        self._room.set()
