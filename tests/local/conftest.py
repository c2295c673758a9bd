"""Servers running the local pipeline with the bundled models, shared by the module's tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.voice import spoken
from models.tts import PiperTts, bundled_voice_path
from tests.chat_server import ChatServer, chat_server
from tests.servers import RunningServer, relay_server

# The prompt library of url_llm_server (--prompts): prompt ids for session.prompt.
PROMPTS = str(Path(__file__).with_name("prompts"))


@pytest.fixture(scope="session")
def local_server() -> Iterator[RunningServer]:
    """The embedded default: bundled whisper, SmolLM2 and piper."""
    with relay_server("--backend", "local", "--llm-max-tokens", "60") as server:
        yield server


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ChatServer]:
    with chat_server() as server:
        yield server


def slow_voice(directory: Path) -> Path:
    """A second piper voice: the bundled joe model with its own settings file, speaking
    twice as slowly (only joe is bundled; a voice is an .onnx and its .json)."""
    joe = Path(bundled_voice_path())
    slow = directory / "slow-joe.onnx"
    slow.symlink_to(joe)
    config = json.loads(Path(f"{joe}.json").read_text())
    config["inference"]["length_scale"] = 2.0
    Path(f"{slow}.json").write_text(json.dumps(config))
    return slow


@pytest.fixture(scope="session")
def url_llm_server(
    scripted_llm: ChatServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The local pipeline with its LLM behind a chat-completions URL (scripted), and the
    voice ``cedar`` mapped to a slower voice (``--voices``)."""
    cedar = slow_voice(tmp_path_factory.mktemp("voices"))
    with relay_server(
        "--backend",
        "local",
        "--llm-url",
        scripted_llm.base_url,
        "--llm-model",
        "scripted",
        "--prompts",
        PROMPTS,
        "--voices",
        f"cedar={cedar}",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def speak() -> Speaker:
    return Speaker(PiperTts(varied=False))


class Speaker:
    """Real speech from piper, as PCM16 24 kHz with the silence trimmed off both ends."""

    def __init__(self, tts: PiperTts) -> None:
        self._tts = tts

    def __call__(self, text: str) -> bytes:
        return spoken(self._tts, text)
