"""``serve`` makes a link secret per run and gives it to its transceivers in their
environment, never on their command line (which any local user can read), and to its relay."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import MOCK_ARGS
from tests.e2e.link import transceiver_urls
from tests.servers import relay_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the transceivers ``serve`` supervises)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return sorted(found)


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = [entry.decode().partition("=") for entry in raw if b"=" in entry]
    return {name: value for name, _, value in pairs}


async def test_serve_gives_its_transceivers_a_secret_by_environment() -> None:
    env = {"RELAY_LINK_SECRET": ""}  # empty means unset: serve makes its own
    with relay_server(*MOCK_ARGS, "--transceivers", "2", env=env) as server:
        pids = children(server.process.pid)
        assert len(pids) == 2
        secrets = {environ(pid).get("RELAY_LINK_SECRET") for pid in pids}
        (secret,) = secrets  # one secret, shared by both
        assert secret and len(secret) >= 32
        for pid in [server.process.pid, *pids]:
            assert secret.encode() not in cmdline(pid)
        urls = await transceiver_urls(server)
        async with httpx.AsyncClient(timeout=5) as http:
            for url in urls:
                assert (await http.get(f"{url}/load")).status_code == 401
                authorized = {"Authorization": f"Bearer {secret}"}
                assert (await http.get(f"{url}/load", headers=authorized)).status_code == 200
        # ...and the relay has it: sessions work.
        client = AsyncOpenAI(api_key="unused", base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            assert (await conn.recv()).type == "session.created"
    assert secret not in "\n".join(server.lines)  # never logged


async def test_serve_link_secret_option_reaches_relay_and_transceivers() -> None:
    secret = "an-operator-given-link-secret-0123456789"
    with relay_server(*MOCK_ARGS, "--link-secret", secret, env={"RELAY_LINK_SECRET": ""}) as server:
        (pid,) = children(server.process.pid)
        assert environ(pid).get("RELAY_LINK_SECRET") == secret
        client = AsyncOpenAI(api_key="unused", base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            assert (await conn.recv()).type == "session.created"
