"""A WebRTC caller (aiortc) against the relay: offer, data channel events, audio both ways."""

from __future__ import annotations

import asyncio
import fractions
import json
import re
import time
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from models.audio import resample, rms
from tests.e2e.client import silence, speech, user_message
from tests.servers import RunningServer
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Microphone(MediaStreamTrack):
    """Speaks PCM16 24 kHz, then silence, as 20 ms 48 kHz frames in real time."""

    kind = "audio"

    def __init__(self, pcm16_24k: bytes) -> None:
        super().__init__()
        self._pcm = np.frombuffer(resample(pcm16_24k, 24_000, 48_000), dtype="<i2")
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / 48000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self._pcm[self._pts : self._pts + 960]
        chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), dtype="<i2")])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += 960
        return frame


async def speaker(track: MediaStreamTrack, heard: bytearray) -> None:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
    try:
        while True:
            frame = await track.recv()
            for out in resampler.resample(frame):  # type: ignore[arg-type]
                heard += bytes(out.planes[0])[: out.samples * 2]
    except MediaStreamError:
        return


async def until(
    events: asyncio.Queue[dict[str, Any]], kind: str, seen: list[str], timeout_s: float = 20
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - loop.time()))
        seen.append(event["type"])
        if event["type"] == kind:
            return event


async def test_webrtc_call(mock_server: RunningServer) -> None:
    base = mock_server.base_url
    async with httpx.AsyncClient(timeout=20) as http:
        secret = (await http.post(f"{base}/realtime/client_secrets", json={})).json()["value"]
        pc = RTCPeerConnection()
        channel = pc.createDataChannel("oai-events")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        channel.on("message", lambda message: events.put_nowait(json.loads(message)))
        pc.addTrack(Microphone(silence(300) + speech("hello there how are you today")))
        heard = bytearray()
        tasks = []
        pc.on("track", lambda track: tasks.append(asyncio.ensure_future(speaker(track, heard))))
        await pc.setLocalDescription(await pc.createOffer())
        reply = await http.post(
            f"{base}/realtime/calls",
            content=pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/sdp"},
        )
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"].startswith("application/sdp")
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        assert call_id.startswith("rtc_")
        # Both ends gather on loopback only (tests/conftest.py, bench/harness.py).
        for sdp in (pc.localDescription.sdp, reply.text):
            found = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", sdp, re.M)
            assert found and set(found) == {"127.0.0.1"}, found
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        seen: list[str] = []
        await until(events, "session.created", seen)
        # A sideband connection sees the same events and can drive the session.
        side_url = f"{mock_server.ws_base_url}/realtime?call_id={call_id}"
        async with connect(side_url) as side:
            await until(events, "input_audio_buffer.speech_started", seen)
            done = await until(events, "response.done", seen, timeout_s=30)
            assert done["response"]["status"] == "completed"
            await until(events, "output_audio_buffer.stopped", seen)
            assert "output_audio_buffer.started" in seen
            assert "response.output_audio.delta" not in seen  # audio is on the track
            assert rms(bytes(heard)) > 100 and len(heard) > 24_000
            sideband_event = json.loads(await asyncio.wait_for(side.recv(), 10))
            assert sideband_event["type"]
            # Interrupt as the Agents SDK does: response.cancel, then output_audio_buffer.clear.
            channel.send(json.dumps(user_message("tell me a long story")))
            channel.send(json.dumps({"type": "response.create"}))
            await until(events, "output_audio_buffer.started", seen)
            channel.send(json.dumps({"type": "response.cancel"}))
            channel.send(json.dumps({"type": "output_audio_buffer.clear"}))
            cancelled = await until(events, "response.done", seen)
            assert cancelled["response"]["status"] == "cancelled"
            await until(events, "output_audio_buffer.cleared", seen)
        hangup = await http.post(f"{base}/realtime/calls/{call_id}/hangup")
        assert hangup.status_code == 200
        gone = await http.post(f"{base}/realtime/calls/{call_id}/hangup")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "call_not_found"
        await pc.close()
        for task in tasks:
            task.cancel()


async def test_calls_errors_are_json(mock_server: RunningServer) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        reply = await http.post(
            f"{mock_server.base_url}/realtime/calls",
            content="not sdp",
            headers={"Content-Type": "application/sdp"},
        )
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_sdp"
        reply = await http.post(
            f"{mock_server.base_url}/realtime/calls",
            headers={"Authorization": "Bearer ek_forged.sig"},
            content="v=0",
        )
        assert reply.status_code == 401


async def offer_sdp() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.createDataChannel("oai-events")
    pc.addTrack(Microphone(silence(100)))
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@pytest.mark.parametrize("typed_parts", [True, False])
async def test_multipart_offer_with_session(mock_server: RunningServer, typed_parts: bool) -> None:
    pc, sdp = await offer_sdp()
    session = json.dumps({"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."})
    if typed_parts:  # what the Python SDK sends
        files: Any = {
            "sdp": (None, sdp, "application/sdp"),
            "session": (None, session, "application/json"),
        }
    else:  # a browser FormData with plain string fields: no per-part content types
        files = {"sdp": (None, sdp), "session": (None, session)}
    async with httpx.AsyncClient(timeout=20) as http:
        reply = await http.post(f"{mock_server.base_url}/realtime/calls", files=files)
        assert reply.status_code == 201, reply.text
        assert "a=fingerprint" in reply.text
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        assert (
            await http.post(f"{mock_server.base_url}/realtime/calls/{call_id}/hangup")
        ).status_code == 200
    await pc.close()


async def test_beta_sdp_post(mock_server: RunningServer) -> None:
    pc, sdp = await offer_sdp()
    async with httpx.AsyncClient(timeout=20) as http:
        reply = await http.post(
            f"{mock_server.base_url}/realtime?model=gpt-realtime",
            content=sdp,
            headers={"Content-Type": "application/sdp"},
        )
        assert reply.status_code == 201 and reply.text.startswith("v=0")
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        await http.post(f"{mock_server.base_url}/realtime/calls/{call_id}/hangup")
    await pc.close()


async def test_call_ends_when_the_caller_goes_away(mock_server: RunningServer) -> None:
    pc, sdp = await offer_sdp()
    async with httpx.AsyncClient(timeout=20) as http:
        reply = await http.post(
            f"{mock_server.base_url}/realtime/calls",
            content=sdp,
            headers={"Content-Type": "application/sdp"},
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        await pc.close()  # the caller disappears
        url = f"{mock_server.base_url}/realtime/calls/{call_id}/hangup"

        async def gone() -> bool:  # the relay ended the call (and its session) by itself
            return (await http.post(url)).status_code == 404

        await eventually(gone, 10, 0.1, "the call ended after its caller left")
