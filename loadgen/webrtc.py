"""``realtime-relay load --transport webrtc``: the simulated client as a WebRTC caller.

It posts an SDP offer to ``/v1/realtime/calls``, speaks on a real-time microphone track,
reads events on ``oai-events`` and times the first non-silent audio on the remote track.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from loadgen.client import RESPONSE_TIMEOUT_S, Figures, LoadOptions
from models.audio import resample

_RATE = 48_000
_FRAME = 960  # 20 ms
_LOUD = 300  # a reply frame with a sample above this is audio, not silence


class _Microphone(MediaStreamTrack):
    """Silence in real time, and speech when asked; ``spoken`` is set when it ends."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, dtype="<i2")
        self._pts = 0
        self._start: float | None = None
        self.spoken = asyncio.Event()

    def say(self, pcm16_24k: bytes) -> None:
        self.spoken.clear()
        self._pending = np.frombuffer(resample(pcm16_24k, 24000, _RATE), dtype="<i2")

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / _RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._pending = self._pending[:_FRAME], self._pending[_FRAME:]
        if len(chunk) and not len(self._pending):
            self.spoken.set()
        chunk = np.concatenate([chunk, np.zeros(_FRAME - len(chunk), dtype="<i2")])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = _RATE, self._pts
        frame.time_base = fractions.Fraction(1, _RATE)
        self._pts += _FRAME
        return frame


class WebRtcClient:
    def __init__(self, options: LoadOptions, figures: Figures, deadline: float) -> None:
        self.options = options
        self.figures = figures
        self.deadline = deadline
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._heard_at: float | None = None  # first loud reply frame since the last reset

    def _calls_url(self) -> str:
        base = self.options.url.replace("ws://", "http://").replace("wss://", "https://")
        return base.rstrip("/") + "/calls"

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self._heard_at is None and isinstance(frame, av.AudioFrame):
                    if int(np.abs(frame.to_ndarray()).max(initial=0)) > _LOUD:
                        self._heard_at = time.monotonic()

    async def run(self) -> None:
        figures = self.figures
        pc = RTCPeerConnection()
        mic = _Microphone()
        listeners: list[asyncio.Task[None]] = []
        pc.on("track", lambda track: listeners.append(asyncio.ensure_future(self._listen(track))))
        channel = pc.createDataChannel("oai-events")
        channel.on("message", lambda message: self._events.put_nowait(json.loads(message)))
        pc.addTrack(mic)
        headers = {"Content-Type": "application/sdp"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        started = time.monotonic()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=30) as http:
                reply = await http.post(
                    self._calls_url(), content=pc.localDescription.sdp, headers=headers
                )
                if reply.status_code != 201:
                    raise ConnectionError(f"call refused: HTTP {reply.status_code}")
                await pc.setRemoteDescription(RTCSessionDescription(reply.text, "answer"))
                await self._until("session.created", 30)
                figures.connect_ms.append((time.monotonic() - started) * 1000)
                figures.active += 1
                try:
                    await self._turns(mic, channel)
                finally:
                    figures.active -= 1
                location = reply.headers.get("location", "")
                with contextlib.suppress(httpx.HTTPError):
                    await http.post(
                        self._calls_url() + "/" + location.rsplit("/", 1)[-1] + "/hangup",
                        headers={"Authorization": headers.get("Authorization", "")},
                    )
        except (OSError, TimeoutError, ConnectionError, httpx.HTTPError):
            figures.dropped_sessions += 1
        else:
            figures.finished += 1
        finally:
            for task in listeners:
                task.cancel()
            await pc.close()

    async def _until(self, kind: str, timeout_s: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            event = await asyncio.wait_for(self._events.get(), max(0.01, deadline - loop.time()))
            self.figures.events += 1
            if event.get("type") == "error":
                self.figures.error_events += 1
            if event.get("type") == kind:
                return event

    async def _turns(self, mic: _Microphone, channel: Any) -> None:
        options, done = self.options, 0
        while time.monotonic() < self.deadline and (
            options.duration_s is not None or done < options.turns
        ):
            self.figures.turns += 1
            try:
                ok = await self._turn(mic, channel)
            except TimeoutError:
                ok = False
            if not ok:
                self.figures.failed_turns += 1
            done += 1

    async def _turn(self, mic: _Microphone, channel: Any) -> bool:
        self._heard_at = None
        if self.options.text:
            channel.send(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [
                                {"type": "input_text", "text": "Hello, how are you today?"}
                            ],
                        },
                    }
                )
            )
            start = time.monotonic()
            channel.send(json.dumps({"type": "response.create"}))
        else:
            mic.say(self.options.audio)
            await asyncio.wait_for(mic.spoken.wait(), 60)
            start = time.monotonic()
            self._heard_at = None  # count only the reply to this turn
        committed = created_at = None
        while True:
            event = await self._until_any(RESPONSE_TIMEOUT_S)
            now = time.monotonic()
            kind = event.get("type")
            if kind == "input_audio_buffer.committed":
                committed = now
            elif kind == "response.created":
                created_at = now
                if committed is not None:
                    self.figures.commit_to_created_ms.append((now - committed) * 1000)
            elif kind == "response.done":
                created = event.get("response", {})
                if self._heard_at is not None:
                    latency = (self._heard_at - start) * 1000
                    target = (
                        self.figures.first_delta_ms
                        if self.options.text
                        else self.figures.speech_end_to_first_audio_ms
                    )
                    target.append(latency)
                self.figures.response_ms.append((now - (created_at or start)) * 1000)
                await self._played_out()
                return bool(created.get("status") == "completed")

    async def _played_out(self) -> None:
        """Wait until the reply has finished playing, so turns do not overlap."""
        with contextlib.suppress(TimeoutError):
            while (await self._until_any(RESPONSE_TIMEOUT_S)).get("type") not in (
                "output_audio_buffer.stopped",
                "output_audio_buffer.cleared",
            ):
                pass

    async def _until_any(self, timeout_s: float) -> dict[str, Any]:
        event = await asyncio.wait_for(self._events.get(), timeout_s)
        self.figures.events += 1
        if event.get("type") == "error":
            self.figures.error_events += 1
        return event
