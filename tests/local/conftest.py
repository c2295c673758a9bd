"""Servers running the local pipeline with the bundled models, shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.voice import spoken
from models.tts import PiperTts
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


@pytest.fixture(scope="session")
def url_llm_server(scripted_llm: ChatServer) -> Iterator[RunningServer]:
    """The local pipeline with its LLM behind a chat-completions URL (scripted)."""
    with relay_server(
        "--backend",
        "local",
        "--llm-url",
        scripted_llm.base_url,
        "--llm-model",
        "scripted",
        "--prompts",
        PROMPTS,
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
