"""Transcription options through the official SDK against the local pipeline (issue 15):
``include`` logprobs, ``keywords``, ``languages``, and deltas segment by segment."""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.e2e.client import Recorder, append_audio, silence
from tests.local.conftest import Speaker
from tests.servers import RunningServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]

LOGPROBS = "item.input_audio_transcription.logprobs"
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


async def transcribe(
    server: RunningServer, speech: bytes, transcription: dict[str, Any], **session: Any
) -> Recorder:
    """A transcription session with these options, given ``speech`` as one committed turn;
    its events."""
    client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        audio = {"input": {"transcription": transcription, "turn_detection": None}}
        config = {"type": "transcription", "audio": audio}
        await rec.send({"type": "session.update", "session": {**config, **session}})
        await rec.until("session.updated")
        await append_audio(rec, silence(200) + speech + silence(300))
        await rec.send({"type": "input_audio_buffer.commit"})
        await rec.until(COMPLETED, 90)
        rec.check()  # every event, logprobs included, passes the SDK's types
        return rec


async def test_logprobs_come_with_every_delta_and_the_transcript(
    local_server: RunningServer, speak: Speaker
) -> None:
    speech = speak("The quick brown fox jumps over the lazy dog.")
    rec = await transcribe(
        local_server, speech, {"model": "whisper-1", "language": "en"}, include=[LOGPROBS]
    )
    completed = rec.of_type(COMPLETED)[0]
    tokens = completed["logprobs"]
    assert "".join(t["token"] for t in tokens).strip() == completed["transcript"]
    assert all(t["logprob"] <= 0 and bytes(t["bytes"]).decode() == t["token"] for t in tokens)
    assert sum(t["logprob"] for t in tokens) / len(tokens) > -1.0  # clear speech: confident
    deltas = rec.of_type(DELTA)
    assert [t for d in deltas for t in d["logprobs"]] == tokens


async def test_no_logprobs_unless_included(local_server: RunningServer, speak: Speaker) -> None:
    rec = await transcribe(local_server, speak("Hello there."), {"model": "whisper-1"})
    assert "logprobs" not in rec.of_type(COMPLETED)[0]
    assert all("logprobs" not in d for d in rec.of_type(DELTA))


async def test_keywords_steer_the_spelling(local_server: RunningServer, speak: Speaker) -> None:
    """tiny.en writes the name it hears its own way; with it as a keyword, the keyword's."""
    speech = speak("Please call Siobhan tomorrow morning.")
    plain = await transcribe(local_server, speech, {"model": "whisper-1"})
    steered = await transcribe(
        local_server, speech, {"model": "whisper-1", "keywords": ["Siobhan"]}
    )
    assert "Siobhan" not in plain.of_type(COMPLETED)[0]["transcript"]
    assert "Siobhan" in steered.of_type(COMPLETED)[0]["transcript"]


async def test_languages_the_english_model_cannot_speak_fail_saying_why(
    local_server: RunningServer, speak: Speaker
) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url=local_server.base_url)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        transcription = {"model": "whisper-1", "languages": ["fr", "de"]}
        audio = {"input": {"transcription": transcription, "turn_detection": None}}
        await rec.send(
            {"type": "session.update", "session": {"type": "transcription", "audio": audio}}
        )
        await rec.until("session.updated")
        await append_audio(rec, silence(200) + speak("Bonjour.") + silence(300))
        await rec.send({"type": "input_audio_buffer.commit"})
        failed = await rec.until("conversation.item.input_audio_transcription.failed", 60)
        assert "English-only, not for fr, de" in failed["error"]["message"]
        rec.check()


async def test_long_speech_arrives_segment_by_segment(
    local_server: RunningServer, speak: Speaker
) -> None:
    """Past the short window (20 s), Whisper's segments are deltas as they are decoded."""
    sentences = [
        "The first thing to know about this relay is that it speaks the realtime protocol.",
        "It answers every client that asks, with patience and in a clear voice.",
        "Audio frames arrive, voice activity is detected, and transcripts stream along.",
        "When the speaker stops, the turn ends and the reply begins at once.",
        "Long recordings are transcribed a segment at a time, and each is sent when ready.",
    ]
    speech = b"".join(speak(s) + silence(400) for s in sentences)
    assert len(speech) / 48_000 > 21
    rec = await transcribe(local_server, speech, {"model": "whisper-1", "language": "en"})
    deltas = [d["delta"] for d in rec.of_type(DELTA)]
    assert len(deltas) >= 3, deltas
    assert "".join(deltas).strip() == rec.of_type(COMPLETED)[0]["transcript"]
