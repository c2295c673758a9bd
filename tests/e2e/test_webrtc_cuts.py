"""A WebRTC caller cuts a reply (its ``output_audio_buffer.clear``, or barge-in by speaking):
the item is truncated to what the caller heard, on the mock backend and through the proxy.

What the caller heard is measured on its own track: the reply's sound from its first to its
last audible sample. The truncated item's audio (``conversation.item.retrieve``) must span
the same, within two 20 ms frames.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import time
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from tests.e2e.client import speech, user_message
from tests.e2e.test_webrtc import speaker, until
from tests.servers import RunningServer
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIBLE = 300  # PCM16 amplitude: the mock voice peaks near 6000, silence decodes to ~0
FRAME_MS = 20


class Microphone(MediaStreamTrack):
    """Silence in 20 ms 48 kHz frames in real time, until told to say something."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pcm = np.zeros(0, dtype="<i2")
        self._pts = 0
        self._start: float | None = None

    def say(self, pcm16_24k: bytes) -> None:
        self._pcm = np.repeat(np.frombuffer(pcm16_24k, dtype="<i2"), 2).astype("<i2")

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / 48000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk, self._pcm = self._pcm[:960], self._pcm[960:]
        chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), dtype="<i2")])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += 960
        return frame


def audible_ms(pcm16_24k: bytes) -> float:
    """From the first audible sample to the last, in milliseconds."""
    samples = np.abs(np.frombuffer(pcm16_24k[: len(pcm16_24k) // 2 * 2], dtype="<i2"))
    loud = np.flatnonzero(samples > AUDIBLE)
    return float(loud[-1] - loud[0]) / 24 if len(loud) else 0.0


@pytest.mark.parametrize("backend", ["mock", "proxy"])
@pytest.mark.parametrize("cut", ["clear", "barge_in"])
async def test_a_cut_truncates_the_item_to_what_the_caller_heard(
    request: pytest.FixtureRequest, backend: str, cut: str
) -> None:
    # The proxy's upstream is the mock server's twin (tests/e2e/conftest.py).
    server: RunningServer = request.getfixturevalue("mock_server" if backend == "mock" else "proxy")
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("oai-events")
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel.on("message", lambda message: events.put_nowait(json.loads(message)))
    microphone = Microphone()
    pc.addTrack(microphone)
    heard = bytearray()
    tasks: list[asyncio.Future[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(speaker(track, heard))))
    seen: list[str] = []
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=20) as http:
            reply = await http.post(
                f"{server.base_url}/realtime/calls",
                content=pc.localDescription.sdp,
                headers={"Authorization": "Bearer sk-client", "Content-Type": "application/sdp"},
            )
        assert reply.status_code == 201, reply.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        await until(events, "session.created", seen)
        # Barge-in cuts the reply; no new reply to the caller's words follows it.
        vad = {"type": "server_vad", "create_response": False, "interrupt_response": True}
        update = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
        channel.send(json.dumps({"type": "session.update", "session": update}))
        await until(events, "session.updated", seen)
        channel.send(json.dumps(user_message("tell me a long story")))
        channel.send(json.dumps({"type": "response.create"}))
        started = await until(events, "output_audio_buffer.started", seen)
        # Let the caller hear some of it: about 600 ms of sound.
        await eventually(lambda: audible_ms(bytes(heard)) > 600, timeout_s=20, what="reply")
        if cut == "clear":
            channel.send(json.dumps({"type": "output_audio_buffer.clear"}))
        else:
            microphone.say(speech("wait stop please"))
        truncated = await until(events, "conversation.item.truncated", seen)
        assert "output_audio_buffer.cleared" in seen
        assert "error" not in seen
        # Everything the relay sent before the cut reaches the caller: 300 ms more of track.
        size = len(heard)
        await eventually(lambda: len(heard) > size + 24 * 2 * 300, what="track after the cut")
        channel.send(
            json.dumps({"type": "conversation.item.retrieve", "item_id": truncated["item_id"]})
        )
        retrieved = await until(events, "conversation.item.retrieved", seen)
        item_audio = base64.b64decode(retrieved["item"]["content"][0]["audio"])
        assert abs(len(item_audio) / 48 - truncated["audio_end_ms"]) <= 1
        heard_ms, kept_ms = audible_ms(bytes(heard)), audible_ms(item_audio)
        assert 600 < heard_ms < 3000  # cut well before the story's end
        assert abs(heard_ms - kept_ms) <= 2 * FRAME_MS, (heard_ms, kept_ms, truncated)
        assert started["response_id"]
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
