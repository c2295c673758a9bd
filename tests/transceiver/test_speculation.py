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
from transceiver.protocol.config import ServerVad
from transceiver.protocol.contract import SessionSpec
from transceiver.protocol.effects import FeedVad, ResponseRequest, Transcribe
from transceiver.protocol.items import item_text
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner
from transceiver.speculation import RECENT_AUDIO_MS, RecentAudio, Speculator, request_signature

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


async def test_recent_audio_keeps_the_last_window_and_slices_by_audio_time() -> None:
    fmt = AudioFormatType.PCM  # 24 kHz, 48 bytes a ms
    recent = RecentAudio()
    stream = bytes(range(256)) * 8000  # 42 s, in appends of odd sizes
    sizes = [961, 1, 3, 4800, 959] * 300
    offset = 0
    for size in sizes:
        recent.add(stream[offset : offset + size], fmt.duration_ms(offset), fmt, RECENT_AUDIO_MS)
        offset += size
    held = recent.duration_ms(fmt)
    assert RECENT_AUDIO_MS <= held <= RECENT_AUDIO_MS + fmt.duration_ms(4800)
    start_ms = recent.start_ms(fmt)
    assert start_ms + held == pytest.approx(fmt.duration_ms(offset))
    # Any window comes back as the stream's own bytes, from the first whole sample held.
    dropped = offset - round(held * fmt.bytes_per_ms)
    assert dropped % 2 == 1  # what is held starts mid-sample
    for lo_ms, hi_ms in ((start_ms + 1000.03, start_ms + 2500.51), (0.0, None), (0.0, 1.0)):
        lo = max(fmt.byte_count(lo_ms), dropped + 1)
        hi = offset if hi_ms is None else max(fmt.byte_count(hi_ms), lo)
        assert recent.between(fmt, lo_ms, hi_ms) == stream[lo:hi]
    # A gap in session audio time starts over.
    recent.add(b"\x01\x02" * 480, fmt.duration_ms(offset) + 500, fmt, RECENT_AUDIO_MS)
    assert recent.between(fmt, 0.0) == b"\x01\x02" * 480
    # Keeping nothing holds nothing, and audio time still runs on (no reset after).
    end_ms = fmt.duration_ms(offset) + 520
    recent.add(b"\x03\x04" * 480, end_ms, fmt, 0.0)
    assert recent.duration_ms(fmt) == 0 and recent.between(fmt, 0.0) == b""
    assert recent.start_ms(fmt) == pytest.approx(end_ms + 20)
    recent.add(b"\x05\x06" * 480, end_ms + 20, fmt, 0.0)
    assert recent.duration_ms(fmt) == 0 and recent.start_ms(fmt) == pytest.approx(end_ms + 40)
    # Keeping again, from where the audio has got to.
    recent.add(b"\x07\x08" * 480, end_ms + 40, fmt, RECENT_AUDIO_MS)
    assert recent.between(fmt, end_ms + 40) == b"\x07\x08" * 480


@pytest.mark.parametrize(
    ("speculative", "judged_ms", "held_ms"),
    [(True, 0.0, RECENT_AUDIO_MS), (False, 8000.0, 8000.0), (False, 0.0, 0.0)],
)
async def test_only_the_audio_that_may_be_asked_for_is_kept(
    speculative: bool, judged_ms: float, held_ms: float
) -> None:
    backend = ScriptedBackend()
    backend.speculative_stt = speculative
    session = RealtimeSession(SessionSpec(model="gpt-realtime"))
    speculator = Speculator(session, backend, {}, lambda: 0.0, lambda request: request)
    fmt = AudioFormatType.PCM
    chunk, vad = bytes(fmt.byte_count(20)), ServerVad(type="server_vad")
    for n in range(2000):  # 40 s of 20 ms appends
        speculator.remember(FeedVad(chunk, "audio/pcm", n * 20.0, vad), judged_ms)
    held = speculator.turn_audio("audio/pcm", 0.0, 60_000.0)
    assert held_ms <= fmt.duration_ms(len(held)) <= held_ms + 20
