"""Speculative STT and preemptive replies in the session shell, with a scripted backend."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from tests.transceiver.requests import request as request_for
from tests.waiting import eventually
from transceiver.backends.base import ResponseSink, TranscriptSink
from transceiver.backends.mock import word_audio
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.contract import SessionSpec
from transceiver.protocol.effects import ResponseRequest, Transcribe
from transceiver.protocol.items import item_text
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner
from transceiver.speculation import request_signature

pytestmark = pytest.mark.asyncio(loop_scope="session")


class ScriptedBackend:
    name = "scripted"
    speculative_stt = True
    preemptive = True

    def __init__(self) -> None:
        self.transcribed: list[float] = []  # seconds of audio per call
        self.requests: list[ResponseRequest] = []
        self.cancelled = 0

    def model_ids(self) -> list[str]:
        return ["scripted"]

    async def transcribe(
        self, job: Transcribe, sink: TranscriptSink, state: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        seconds = AudioFormatType(job.audio_format).duration_ms(len(job.audio)) / 1000
        self.transcribed.append(seconds)
        return f"words {len(self.transcribed)}", {"type": "duration", "seconds": seconds}

    async def respond(
        self, request: ResponseRequest, sink: ResponseSink, state: dict[str, Any]
    ) -> str | None:
        self.requests.append(request)
        try:
            await sink.text("reply to " + item_text(request.context[-1].item))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None

    async def aclose(self) -> None:
        return None


class Client:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []

    async def send(self, message: str) -> None:
        self.events.append(json.loads(message))

    async def close(self, code: int, reason: str) -> None:
        return None

    async def frames(self) -> Any:
        while (frame := await self.incoming.get()) is not None:
            yield frame

    def append(self, pcm: bytes) -> None:
        for offset in range(0, len(pcm), 960):
            chunk = base64.b64encode(pcm[offset : offset + 960]).decode()
            self.incoming.put_nowait(
                json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
            )


def speech(words: str) -> bytes:
    return b"".join(word_audio(word, 320) for word in words.split())


SILENCE_MS = b"\0\0" * 24


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def run_turns(
    script: list[bytes | str | None], text_only: bool = True
) -> tuple[ScriptedBackend, Client]:
    """Feed audio pieces or raw client frames (str); ``None`` lets the loop run."""
    backend, client = ScriptedBackend(), Client()
    session = RealtimeSession(SessionSpec(model="gpt-realtime"))
    session.receive_client_event(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}},
        0,
    )
    runner = SessionRunner(session, backend, client.send, client.close)  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run(client.frames()))
    for piece in script:
        if piece is None:
            await settle()
        elif isinstance(piece, str):
            client.incoming.put_nowait(piece)
        else:
            client.append(piece)
            await settle()
    await eventually(
        lambda: any(e["type"] == "response.done" for e in client.events), 2, 0.01, "a reply"
    )
    client.incoming.put_nowait(None)
    await task
    return backend, client


async def test_reply_generated_during_the_silence_window_is_used() -> None:
    backend, client = await run_turns(
        [speech("what is the time please"), SILENCE_MS * 200, None, SILENCE_MS * 600]
    )
    assert len(backend.transcribed) == 1  # the speculative transcription, reused
    assert [r.response_id for r in backend.requests] == ["resp_preview"]
    done = next(e for e in client.events if e["type"] == "response.done")
    assert done["response"]["output"][0]["content"][0]["text"] == "reply to words 1"
    assert done["response"]["id"].startswith("resp_") and done["response"]["id"] != "resp_preview"


async def test_speech_that_resumes_discards_the_speculation() -> None:
    backend, client = await run_turns(
        [
            speech("what is"),
            SILENCE_MS * 200,
            None,  # a pause: speculate, reply ahead
            speech("the time please"),
            SILENCE_MS * 200,
            None,
            SILENCE_MS * 600,
        ]
    )
    assert len(backend.transcribed) == 2
    assert [r.response_id for r in backend.requests] == ["resp_preview", "resp_preview"]
    done = next(e for e in client.events if e["type"] == "response.done")
    assert done["response"]["output"][0]["content"][0]["text"] == "reply to words 2"


async def test_a_different_request_is_generated_afresh() -> None:
    # The session changes during the silence window: the reply made ahead is stale.
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "instructions": "Answer in French."},
    }
    backend, _ = await run_turns(
        [
            speech("what is the time please") + SILENCE_MS * 200,
            None,
            json.dumps(update),
            SILENCE_MS * 600,
        ],
        text_only=False,
    )
    assert [r.response_id for r in backend.requests][0] == "resp_preview"
    assert backend.requests[-1].instructions == "Answer in French."
    assert backend.requests[-1].response_id != "resp_preview"


async def test_signature_ignores_the_response_id() -> None:
    request = request_for()
    assert request_signature(request) == request_signature(replace(request, response_id="b"))
    assert request_signature(request) != request_signature(replace(request, instructions="y"))


async def test_semantic_vad_turns_end_on_the_eagerness_timeout_without_a_model() -> None:
    # No end-of-turn model (transceiver/turns.py): eagerness high waits 2 s of silence.
    td = {"type": "semantic_vad", "eagerness": "high"}
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
    }
    backend, client = await run_turns(
        [json.dumps(update), None, speech("what is the time please"), SILENCE_MS * 2100]
    )
    types = [e["type"] for e in client.events]
    assert "input_audio_buffer.speech_stopped" in types and "response.done" in types
    assert backend.requests[-1].context[-1].item["role"] == "user"
