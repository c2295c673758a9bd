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
UPSTREAM_KEY = "sk-upstream-secret"
PREFIX = "You are a helpful voice agent of ACME."


@pytest.fixture(scope="session")
def mock_server() -> Iterator[RunningServer]:
    with relay_server(*MOCK_ARGS) as server:
        yield server


def proxy_args(upstream: RunningServer, *extra: str) -> tuple[str, ...]:
    """``--backend openai`` in front of ``upstream``, taking client key ``sk-client``."""
    return (
        "--backend",
        "openai",
        "--upstream-url",
        f"{upstream.ws_base_url}/realtime",
        "--api-keys",
        "sk-client",
        *extra,
    )


@pytest.fixture(scope="session")
def upstream() -> Iterator[RunningServer]:
    """The mock server (``MOCK_ARGS``) as an upstream that wants ``UPSTREAM_KEY``."""
    with relay_server(*MOCK_ARGS, "--api-keys", UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def proxy(upstream: RunningServer) -> Iterator[RunningServer]:
    """The openai proxy in front of ``upstream``, with a model policy and an instructions
    prefix."""
    args = proxy_args(
        upstream,
        "--allowed-models",
        "gpt-realtime,gpt-realtime-2025-08-28",
        "--model-map",
        "gpt-realtime=gpt-realtime-2025-08-28",
        "--instructions-prefix",
        PREFIX,
    )
    # The server-side key comes from the environment; clients never hold it.
    with relay_server(*args, env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:
        yield server
