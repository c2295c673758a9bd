"""semantic_vad over WebRTC: a caller (aiortc) speaks a complete question into its microphone
track, and the end-of-turn model (models/turn.py) ends the turn at the pause, long before
eagerness ``low``'s 8 s of silence would, and the question is answered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from models.tts import PiperTts
from models.turn import bundled_turn_model_path
from tests.e2e.client import silence
from tests.e2e.test_semantic_vad import spoken
from tests.e2e.test_webrtc import Microphone, speaker
from tests.invariants import check_stream
from tests.servers import RunningServer

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        not bundled_turn_model_path().is_file(),
        reason="no end-of-turn model (scripts/fetch-smart-turn)",
    ),
]

LEAD_MS = 300
SEMANTIC = {"type": "semantic_vad", "eagerness": "low"}  # 8 s of silence at most


@pytest.fixture(scope="module")
def voice() -> Iterator[PiperTts]:
    yield PiperTts(varied=False)


async def next_of(
    events: asyncio.Queue[dict[str, Any]], kind: str, seen: list[dict[str, Any]], timeout_s: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - loop.time()))
        seen.append(event)
        if event["type"] == kind:
            return event


async def test_a_spoken_question_is_committed_and_answered(
    mock_server: RunningServer, voice: PiperTts
) -> None:
    question = spoken(voice, "What time does the museum open on Sundays?")
    question_ms = len(question) / 48
    base = mock_server.base_url
    session = {"type": "realtime", "audio": {"input": {"turn_detection": SEMANTIC}}}
    async with httpx.AsyncClient(timeout=20) as http:
        minted = await http.post(f"{base}/realtime/client_secrets", json={"session": session})
        secret = minted.json()["value"]
        pc = RTCPeerConnection()
        channel = pc.createDataChannel("oai-events")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        channel.on("message", lambda message: events.put_nowait(json.loads(message)))
        # The microphone goes on with silence after the question, as a caller's does.
        pc.addTrack(Microphone(silence(LEAD_MS) + question))
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
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        seen: list[dict[str, Any]] = []
        created = await next_of(events, "session.created", seen, 20)
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        started = time.monotonic()
        await next_of(events, "input_audio_buffer.speech_started", seen, 20)
        # Well before the question plus eagerness low's 8 s: only the model ends this turn.
        budget_s = (LEAD_MS + question_ms) / 1000 + 4.0
        stopped = await next_of(events, "input_audio_buffer.speech_stopped", seen, budget_s)
        committed = await next_of(events, "input_audio_buffer.committed", seen, 5)
        assert time.monotonic() - started < budget_s
        assert committed["item_id"] == stopped["item_id"]
        assert stopped["audio_end_ms"] <= LEAD_MS + question_ms + 200
        done = await next_of(events, "response.done", seen, 30)
        assert done["response"]["status"] == "completed"
        await next_of(events, "output_audio_buffer.stopped", seen, 30)
        assert len(heard) > 0
        assert len([e for e in seen if e["type"] == "input_audio_buffer.committed"]) == 1
        check_stream(seen)
        await http.post(f"{base}/realtime/calls/{call_id}/hangup")
        await pc.close()
        for task in tasks:
            task.cancel()
