"""What a transceiver does at start: options the chosen backend does not use are named
(transceiver/settings.py ``unused_options``), flag or environment alike, instead of being
ignored quietly; the models that judge the words at a pause are built before it says it
is ready where its pauses will ask for them (``--turn-transcribe``), and by default at
the first pause that asks."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.servers import relay_server
from transceiver.settings import TransceiverSettings, unused_options


@pytest.fixture(autouse=True)
def _no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("given", "unused"),
    [
        ({"backend": "mock"}, []),
        # The mock transcribes semantic_vad's pauses for the words unless told not to.
        ({"backend": "mock", "stt_model": "x", "llm_url": "http://x/v1"}, ["--llm-url"]),
        ({"backend": "mock", "stt_model": "x", "turn_transcribe": True}, []),
        ({"backend": "mock", "stt_model": "x", "turn_transcribe": False}, ["--stt-model"]),
        ({"backend": "mock", "turn_text_threshold": -10}, []),
        (
            {"backend": "mock", "turn_text_threshold": -10, "turn_transcribe": False},
            ["--turn-text-threshold"],
        ),
        # "none" is how the words are turned off: used wherever turns are judged here.
        ({"backend": "mock", "turn_text_model": "none"}, []),
        ({"backend": "openai", "local_turn_detection": True, "turn_text_model": "none"}, []),
        (
            {"backend": "mock", "turn_text_model": "none", "turn_text_threshold": -10},
            ["--turn-text-threshold"],
        ),
        ({"backend": "openai", "local_turn_detection": True, "stt_model": "x"}, []),
        # The local backend judges its own speculative transcripts: nothing to switch.
        ({"backend": "local", "stt_model": "x", "turn_transcribe": False}, ["--turn-transcribe"]),
        ({"backend": "local", "turn_transcribe": True}, ["--turn-transcribe"]),
        ({"backend": "local", "speculative_stt": False, "turn_transcribe": True}, []),
        (
            {"backend": "openai", "fallback": "local", "turn_transcribe": True},
            ["--turn-transcribe"],
        ),
        ({"backend": "openai", "fallback": "mock", "turn_transcribe": True}, []),
        (
            {"backend": "mock", "upstream_url": "wss://x", "voices": ["a=b.onnx"]},
            ["--voices", "--upstream-url"],
        ),
        ({"backend": "local", "mock_script": "s.yaml", "llm_threads": 2}, ["--mock-script"]),
        ({"backend": "local", "mock_fault_error_after": 3, "vad_model": "v.onnx"}, ["--vad-model"]),
        ({"backend": "local", "vad": "silero", "vad_model": "v.onnx"}, []),
        (
            {"backend": "openai", "tts_voice": "v.onnx", "max_input_audio_s": 60},
            ["--tts-voice", "--max-input-audio-s"],
        ),
        (
            {
                "backend": "openai",
                "fallback": "local",
                "tts_voice": "v.onnx",
                "max_input_audio_s": 60,
            },
            [],
        ),
        (
            {"backend": "openai", "fallback": "mock", "mock_realtime": False, "llm_gguf": "m.gguf"},
            ["--llm-gguf"],
        ),
        (
            {"backend": "openai", "fallback": "mock", "prompts": "p", "mock_fault_close_after": 2},
            ["--prompts", "--mock-fault-close-after"],
        ),
    ],
)
def test_options_the_backend_does_not_use(given: dict[str, Any], unused: list[str]) -> None:
    assert sorted(unused_options(TransceiverSettings(**given))) == sorted(unused)


def test_the_environment_counts_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_LLM_GGUF", "/models/m.gguf")
    assert unused_options(TransceiverSettings(backend="mock")) == ["--llm-gguf"]


def test_the_transceiver_says_so_at_start() -> None:
    args = ("--backend", "mock", "--llm-url", "http://127.0.0.1:9/v1", "--insecure-no-link-secret")
    env = {"RELAY_STT_MODEL": "base.en", "RELAY_TURN_TRANSCRIBE": "false"}
    with relay_server(*args, command="transceiver", timeout_s=120, env=env) as transceiver:
        said = [line for line in transceiver.lines if "not used by the mock backend" in line]
    assert len(said) == 1 and "--stt-model, --llm-url: not used" in said[0], said


def test_turn_transcribe_builds_its_models_before_the_transceiver_is_ready() -> None:
    args = ("--backend", "mock", "--turn-transcribe", "--insecure-no-link-secret")
    with relay_server(*args, command="transceiver", timeout_s=120) as transceiver:
        lines = list(transceiver.lines)
    ready = next(i for i, line in enumerate(lines) if "transceiver ready" in line)
    for built in ("the words are checked too", "pauses are transcribed for the words"):
        assert any(built in line for line in lines[:ready]), (built, lines)


def test_by_default_the_mock_builds_them_at_its_first_pause_not_at_start() -> None:
    # Load tests of server_vad against the mock never pay for the words' models.
    args = ("--backend", "mock", "--insecure-no-link-secret")
    with relay_server(*args, command="transceiver", timeout_s=120) as transceiver:
        lines = list(transceiver.lines)
    ready = next(i for i, line in enumerate(lines) if "transceiver ready" in line)
    for built in ("the words are checked too", "pauses are transcribed for the words"):
        assert not any(built in line for line in lines[:ready]), (built, lines)
