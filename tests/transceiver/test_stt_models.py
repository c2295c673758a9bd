"""``--stt-models``: session transcription model names mapped to Whisper models (local)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from pydantic import ValidationError

from models.errors import SttError
from models.stt import Transcript, bundled_whisper_path
from transceiver.backends.local import LocalBackend, load_stt_models
from transceiver.protocol.config import Transcription
from transceiver.protocol.effects import Transcribe
from transceiver.settings import TransceiverSettings

pytestmark = pytest.mark.models


def test_each_name_gets_its_model_loaded_once_and_every_other_name_the_default() -> None:
    path = bundled_whisper_path()
    settings = TransceiverSettings(
        backend="mock", stt_models=f"gpt-4o-transcribe={path},gpt-4o-mini-transcribe={path}"
    )
    default, named = load_stt_models(settings)
    assert named["gpt-4o-transcribe"] is named["gpt-4o-mini-transcribe"]  # loaded once
    assert named["gpt-4o-transcribe"] is not default
    backend = LocalBackend(default, cast(Any, None), cast(Any, None), stt_models=named, workers=1)
    assert backend.stt_for("gpt-4o-transcribe") is named["gpt-4o-transcribe"]
    assert backend.stt_for("whisper-1") is default and backend.stt_for(None) is default


class Recording:
    """A Whisper stand-in that says which model it is (routing, not recognition)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def transcribe(self, pcm16: bytes, **options: Any) -> Transcript:
        options["on_segment"](self.name, ())
        return Transcript(self.name, "en", len(pcm16) / 32_000, (self.name,))


class Sink:
    wants_logprobs = False

    def __init__(self) -> None:
        self.deltas: list[str] = []

    async def delta(self, text: str, logprobs: Any = None) -> None:
        self.deltas.append(text)


@pytest.mark.parametrize(
    ("model", "heard_by"),
    [("gpt-4o-transcribe", "mapped"), ("whisper-1", "default"), (None, "default")],
)
def test_a_session_is_transcribed_by_its_models_engine(model: str | None, heard_by: str) -> None:
    backend = LocalBackend(
        cast(Any, Recording("default")),
        cast(Any, None),
        cast(Any, None),
        stt_models={"gpt-4o-transcribe": cast(Any, Recording("mapped"))},
        workers=1,
    )
    job = Transcribe("item_1", bytes(9600), "audio/pcm", Transcription(model=model))
    sink = Sink()
    text, _ = asyncio.run(backend.transcribe(job, sink, {}))
    assert text == heard_by and sink.deltas == [heard_by]


def test_a_model_that_cannot_be_loaded_stops_the_start(tmp_path: Any) -> None:
    # An empty directory, not a missing path: faster-whisper takes a missing path for a
    # model name to download, and tests reach nothing but loopback.
    settings = TransceiverSettings(backend="mock", stt_models=f"whisper-1={tmp_path}")
    with pytest.raises(SttError):
        load_stt_models(settings)


@pytest.mark.parametrize("entry", ["whisper-1", "=small.en", "whisper-1="])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValidationError):
        TransceiverSettings(backend="mock", stt_models=entry)
