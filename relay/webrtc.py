"""WebRTC calls (PROTOCOL.md sections 3.2 and 9): aiortc media and the ``oai-events`` channel.

Each call is one transceiver session, opened with ``media=1``. The relay decodes the
caller's Opus to PCM16 24 kHz and appends it to the session; the session's audio
deltas go back as Opus on the outgoing track, in 20 ms frames paced on a monotonic
clock (silence when idle). Every other server event goes on the data channel and to
any sideband WebSocket (``?call_id=``); the ``output_audio_buffer.*`` events come from
here, since only the media shell knows what is playing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from transceiver.protocol.ids import IdFactory

log = logging.getLogger(__name__)

RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms
_FRAME_BYTES = FRAME_SAMPLES * 2
_TIME_BASE = fractions.Fraction(1, RATE_HZ)
Send = Callable[[str], Awaitable[None]]


class OutboundAudio(MediaStreamTrack):
    """The server's voice: 20 ms Opus frames on a monotonic clock, silence when idle."""

    kind = "audio"

    def __init__(self, on_drained: Callable[[], None]) -> None:
        super().__init__()
        self._pending = bytearray()  # PCM16 48 kHz mono
        self._start: float | None = None
        self._pts = 0
        self._on_drained = on_drained

    def push(self, pcm16_24k: bytes) -> None:
        samples = np.frombuffer(pcm16_24k[: len(pcm16_24k) // 2 * 2], dtype="<i2")
        self._pending += np.repeat(samples, 2).astype("<i2").tobytes()  # 24 -> 48 kHz

    @property
    def playing(self) -> bool:
        return bool(self._pending)

    def clear(self) -> bool:
        had = bool(self._pending)
        self._pending.clear()
        return had

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / RATE_HZ - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        was_playing = bool(self._pending)
        chunk = bytes(self._pending[:_FRAME_BYTES])
        del self._pending[:_FRAME_BYTES]
        chunk += b"\0" * (_FRAME_BYTES - len(chunk))
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


class Call:
    """One WebRTC call: peer connection, data channel, sidebands and the upstream session."""

    def __init__(
        self,
        call_id: str,
        pc: RTCPeerConnection,
        upstream: ClientConnection,
        on_close: Callable[[Call], None],
        idle_timeout_s: float = 20.0,
    ) -> None:
        self.id = call_id
        self.idle_timeout_s = idle_timeout_s
        self.pc = pc
        self.upstream = upstream
        self.ids = IdFactory()
        self.outbound = OutboundAudio(self._drained)
        self.sidebands: set[Send] = set()
        self._channel: RTCDataChannel | None = None
        self._backlog: list[str] = []  # events before the channel opened
        self._response_id: str | None = None
        self._cut_response_id: str | None = None  # its playback was cleared: drop the rest
        self._stopped_pending: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_close = on_close
        self.closed = asyncio.Event()

    # -- wiring ------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._pump_upstream())

        # The offer's tracks exist once the remote description is set; drain them all.
        for receiver in self.pc.getReceivers():
            track = receiver.track
            self._spawn(self._drain(track) if track.kind == "audio" else _discard(track))

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "oai-events":
                return
            self._channel = channel

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                self._spawn(self.from_client(message))

            def flush() -> None:
                backlog, self._backlog = self._backlog, []
                for event in backlog:
                    channel.send(event)

            if channel.readyState == "open":
                flush()
            else:
                channel.on("open", flush)

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def from_client(self, message: str | bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.upstream.send(message)

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Caller audio -> PCM16 24 kHz -> ``input_audio_buffer.append``."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), self.idle_timeout_s)
            except (MediaStreamError, TimeoutError):
                # The caller hung up or vanished: a bounded wait, then the call ends.
                log.info("call %s: caller audio stopped", self.id)
                await self.close()
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            pcm = b"".join(
                bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame)
            )
            if pcm:
                audio = base64.b64encode(pcm).decode("ascii")
                await self.from_client(
                    json.dumps({"type": "input_audio_buffer.append", "audio": audio})
                )

    # -- server events ----------------------------------------------------------------

    def _event(self, type: str, **fields: Any) -> str:
        return json.dumps({"type": type, "event_id": self.ids.event_id(), **fields})

    async def _pump_upstream(self) -> None:
        try:
            async for frame in self.upstream:
                text = frame if isinstance(frame, str) else frame.decode()
                await self._server_event(text)
        except ConnectionClosed:
            pass
        finally:
            await self.close()

    async def _server_event(self, text: str) -> None:
        event = json.loads(text)
        kind = event.get("type")
        if kind == "response.output_audio.delta":  # audio goes on the media track
            if event.get("response_id") == self._cut_response_id:
                return  # still in flight when its playback was cut: never played
            if not self.outbound.playing:
                self._response_id = event.get("response_id")
                await self.broadcast(
                    self._event("output_audio_buffer.started", response_id=self._response_id)
                )
            self.outbound.push(base64.b64decode(event.get("delta", "")))
            return
        if kind == "input_audio_buffer.speech_started" and self.outbound.clear():
            self._cut_response_id = self._response_id
            await self.broadcast(text)  # barge-in: stop playback at once
            await self.broadcast(
                self._event("output_audio_buffer.cleared", response_id=self._response_id)
            )
            return
        if kind == "output_audio_buffer.cleared":  # the client's output_audio_buffer.clear
            self.outbound.clear()
            self._cut_response_id = event.get("response_id") or self._response_id
        if kind == "response.done" and self.outbound.playing:
            self._stopped_pending = event["response"]["id"]
        await self.broadcast(text)

    def _drained(self) -> None:
        """The outgoing track played its last buffered frame."""
        response_id = self._stopped_pending or self._response_id
        self._stopped_pending = None
        self._spawn(
            self.broadcast(self._event("output_audio_buffer.stopped", response_id=response_id))
        )

    async def broadcast(self, text: str) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif channel is None or channel.readyState == "connecting":
            self._backlog.append(text)
        for send in list(self.sidebands):
            try:
                await send(text)
            except Exception:  # a sideband that went away
                self.sidebands.discard(send)

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._on_close(self)
        self.outbound.stop()
        with contextlib.suppress(Exception):
            await self.upstream.close()
        await self.pc.close()
        log.info("call %s ended", self.id)


async def _discard(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
