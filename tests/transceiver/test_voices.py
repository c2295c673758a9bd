"""``--voices``: session voice names mapped to piper voices on the local backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from models.errors import TtsError
from models.tts import PiperTts, bundled_voice_path
from tests.local.conftest import slow_voice
from transceiver.backends.local import LocalBackend, load_voices
from transceiver.settings import TransceiverSettings


def test_each_name_gets_its_voice_and_every_other_name_the_default() -> None:
    path = str(bundled_voice_path())
    default = PiperTts()
    voices = load_voices([f"marin={path}", f"cedar={path}", f"joe={path}"])
    assert voices["marin"] is voices["cedar"] is voices["joe"]  # one voice loaded once
    assert voices["marin"] is not default
    backend = LocalBackend(cast(Any, None), cast(Any, None), default, voices=voices, workers=1)
    assert backend.voice_for("marin") is voices["marin"]
    assert backend.voice_for({"id": "joe"}) is voices["joe"]  # a custom voice by its id
    assert backend.voice_for("alloy") is default and backend.voice_for("ash") is default


def test_a_voice_that_cannot_be_loaded_stops_the_start(tmp_path: Any) -> None:
    with pytest.raises(TtsError):
        load_voices([f"marin={tmp_path / 'missing.onnx'}"])


@pytest.mark.parametrize("entry", ["marin", "=x.onnx", "marin=", "marin=x.onnx#two"])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValidationError):
        TransceiverSettings(backend="mock", voices=entry)


def test_two_configured_voices_speak_differently(tmp_path: Any) -> None:
    """Only joe is bundled, so the second voice is joe's model with its own settings file
    (slower, as a voice's ``inference`` section may say): a voice is an .onnx and its .json."""
    joe = Path(bundled_voice_path())
    slow = slow_voice(tmp_path)
    voices = load_voices([f"marin={joe}", f"cedar={slow}"])
    backend = LocalBackend(cast(Any, None), cast(Any, None), PiperTts(), voices=voices, workers=1)
    text = "Two voices, one sentence."
    marin = backend.voice_for("marin").synthesize(text)
    cedar = backend.voice_for("cedar").synthesize(text)
    assert len(cedar) > 1.3 * len(marin)  # the same words, said by a slower voice
