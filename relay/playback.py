"""A WebRTC call's outgoing audio: the server's voice as 20 ms frames in real time.

The session's PCM16 24 kHz goes on the track as it is: aiortc's Opus encoder resamples it
to 48 kHz with one libswresample per track (aiortc/codecs/opus.py). The track counts what it
sent of each item (what the caller heard), for the cuts of relay/webrtc.py.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

RATE_HZ = 24_000
FRAME_SAMPLES = 480  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2
BYTES_PER_MS = RATE_HZ * 2 // 1000
_TIME_BASE = fractions.Fraction(1, RATE_HZ)


class OutboundAudio(MediaStreamTrack):
    """The server's voice: 20 ms Opus frames on a monotonic clock, silence when idle.

    It counts, per item, the audio it has sent in frames: what the caller heard.
    """

    kind = "audio"

    def __init__(self, on_drained: Callable[[], None]) -> None:
        super().__init__()
        self._pending = bytearray()  # PCM16 24 kHz mono
        # Whose audio is pending, in order: [item id, bytes of it still in _pending].
        self._segments: deque[list[Any]] = deque()
        # Bytes of each item's audio sent in frames, for the items pending or last pushed.
        self._played: dict[str, int] = {}
        self._start: float | None = None
        self._pts = 0
        self._on_drained = on_drained

    def push(self, pcm16_24k: bytes, item_id: str = "") -> None:
        audio = pcm16_24k[: len(pcm16_24k) // 2 * 2]
        if not audio:
            return
        self._pending += audio
        if self._segments and self._segments[-1][0] == item_id:
            self._segments[-1][1] += len(audio)
            return
        self._segments.append([item_id, len(audio)])
        keep = {segment[0] for segment in self._segments}
        self._played = {item: sent for item, sent in self._played.items() if item in keep}
        self._played.setdefault(item_id, 0)

    @property
    def playing(self) -> bool:
        return bool(self._pending)

    @property
    def pending_bytes(self) -> int:
        """The audio pushed but not yet sent in frames (PCM16 24 kHz)."""
        return len(self._pending)

    def queued_ms(self, item_id: str) -> int:
        """How much of the item's audio the caller will have heard once the track has
        played all it holds: what it sent plus what is pending, in whole milliseconds."""
        pending: int = sum(size for item, size in self._segments if item == item_id)
        return (self._played.get(item_id, 0) + pending) // BYTES_PER_MS

    def played_ms(self, item_id: str) -> int:
        """How much of the item's audio went out on the track, in whole milliseconds."""
        return self._played.get(item_id, 0) // BYTES_PER_MS

    def clear(self) -> list[str]:
        """Drop the audio not yet played; the items it belonged to, in order."""
        items = list(dict.fromkeys(segment[0] for segment in self._segments))
        self._pending.clear()
        self._segments.clear()
        return items

    def _sent(self, size: int) -> None:
        """``size`` bytes from the head of ``_pending`` went out in a frame."""
        while size and self._segments:
            segment = self._segments[0]
            taken = min(size, segment[1])
            self._played[segment[0]] = self._played.get(segment[0], 0) + taken
            segment[1] -= taken
            size -= taken
            if not segment[1]:
                self._segments.popleft()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / RATE_HZ - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        was_playing = bool(self._pending)
        chunk = bytes(self._pending[:FRAME_BYTES])
        del self._pending[:FRAME_BYTES]
        self._sent(len(chunk))
        chunk += b"\0" * (FRAME_BYTES - len(chunk))
        if was_playing and not self._pending:
            self._on_drained()
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES
        return frame
