from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RunningServer, relay_server

SCRIPT = str(Path(__file__).with_name("mock_script.yaml"))
MOCK_ARGS = (
    "--backend",
    "mock",
    "--mock-script",
    SCRIPT,
    "--mock-first-delta-ms",
    "20",
    "--mock-words-per-minute",
    "900",
)


@pytest.fixture(scope="session")
def mock_server() -> Iterator[RunningServer]:
    with relay_server(*MOCK_ARGS) as server:
        yield server
