"""Session-scoped fixtures: each bundled model is loaded once for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.llm import LlamaCppLlm
from models.stt import WhisperStt
from models.tts import PiperTts


@pytest.fixture(scope="session")
def whisper_stt() -> WhisperStt:
    return WhisperStt()


@pytest.fixture(scope="session")
def piper_tts() -> PiperTts:
    return PiperTts(varied=False)


@pytest.fixture(scope="session")
def llama_llm() -> Iterator[LlamaCppLlm]:
    llm = LlamaCppLlm(n_ctx=1024)
    yield llm
    llm.close()


_MODEL_FIXTURES = {"whisper_stt", "piper_tts", "llama_llm"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag tests that load a real model with ``models`` (deselect: ``-m "not models"``)."""
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)
