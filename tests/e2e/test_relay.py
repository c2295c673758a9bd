"""The relay edge: auth, subprotocols, transceiver failure, fault knobs, REST."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator

import httpx
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.client import user_message
from tests.e2e.conftest import MOCK_ARGS
from tests.e2e.link import LINK_ENV, LINK_HEADERS
from tests.servers import RunningServer, relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-relay-test-key-123"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RunningServer]:
    args = (*MOCK_ARGS, "--api-keys", KEY, "--transceivers", "2")
    with relay_server(*args, env=LINK_ENV) as server:
        yield server


async def next_event(ws: ClientConnection, timeout_s: float = 10) -> dict[str, object]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))  # type: ignore[no-any-return]


async def test_bad_key_is_refused_before_upgrade(auth_server: RunningServer) -> None:
    url = f"{auth_server.ws_base_url}/realtime?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers={"Authorization": "Bearer sk-wrong"}):
            pass
    assert info.value.response.status_code == 401
    body = json.loads(info.value.response.body or b"{}")
    assert body["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus):
        async with connect(url):
            pass
    client = AsyncOpenAI(api_key="sk-wrong", base_url=auth_server.base_url)
    with pytest.raises(Exception, match="401"):
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    assert not any("sk-wrong" in line or KEY in line for line in auth_server.lines)


async def test_header_and_subprotocol_auth(auth_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key=KEY, base_url=auth_server.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert json.loads(await conn.recv_bytes())["type"] == "session.created"
    url = f"{auth_server.ws_base_url}/realtime?model=gpt-realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"]
    async with connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        first = await next_event(ws)
        assert first["type"] == "session.created"
        assert (await next_event(ws))["type"] == "conversation.created"  # beta by subprotocol


async def test_rest_endpoints(auth_server: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"http://127.0.0.1:{auth_server.port}/healthz")).json()
        assert health["status"] == "ok" and health["transceivers"]["total"] == 2
    async with AsyncOpenAI(api_key=KEY, base_url=auth_server.base_url) as client:
        models = [m.id async for m in client.models.list()]
    assert "gpt-realtime" in models


async def transceiver_pids(server: RunningServer) -> dict[str, tuple[int, int]]:
    """url -> (pid, sessions on it as the relay counts them)."""
    status = f"http://127.0.0.1:{server.port}/status"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        members = (await http.get(status)).json()["transceivers"]
    async with httpx.AsyncClient(headers=LINK_HEADERS) as http:
        result = {}
        for member in members:
            url = member["url"].replace("ws://", "http://")
            info = (await http.get(f"{url}/load")).json()
            result[url] = (info["pid"], member["sessions"])
        return result


async def test_transceiver_death_costs_only_its_sessions(auth_server: RunningServer) -> None:
    url = f"{auth_server.ws_base_url}/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with connect(url, additional_headers=headers) as victim:
        await next_event(victim)
        # serve's transceivers each offer a Unix socket, and the relay links over it.
        await eventually(
            lambda: any(
                "link to transceiver" in line and "(unix:" in line for line in auth_server.lines
            ),
            what="the relay's link over a Unix socket",
        )
        before = await transceiver_pids(auth_server)
        victim_url = next(u for u, (_, n) in before.items() if n == 1)
        async with connect(url, additional_headers=headers) as survivor:
            await next_event(survivor)
            os.kill(before[victim_url][0], signal.SIGKILL)
            error = await next_event(victim)
            assert error["type"] == "error"
            assert error["error"]["code"] == "transceiver_unavailable"  # type: ignore[index]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(victim.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            await survivor.send(json.dumps(user_message("still here")))
            assert (await next_event(survivor))["type"] == "conversation.item.added"

    # serve restarts the dead transceiver.
    async def restarted() -> bool:
        try:
            after = await transceiver_pids(auth_server)
        except httpx.HTTPError:
            return False  # still restarting
        return after[victim_url][0] != before[victim_url][0]

    await eventually(restarted, timeout_s=20, what="the transceiver restarted")
    # Its socket file was left behind by the kill: the new process took it over.
    async with connect(url, additional_headers=headers) as ws:
        assert (await next_event(ws))["type"] == "session.created"
    links = [line for line in auth_server.lines if "link to transceiver" in line and "open" in line]
    assert all("(unix:" in line for line in links), links


async def test_fault_knobs() -> None:
    with relay_server(
        *MOCK_ARGS, "--mock-fault-error-after", "1", "--mock-fault-close-after", "4"
    ) as server:
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        async with connect(url) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            error = await next_event(ws)
            assert error["type"] == "error"
            assert error["error"]["code"] == "injected_fault"  # type: ignore[index]
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            received = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(await next_event(ws))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            assert [e["type"] for e in received] == ["input_audio_buffer.cleared"] * 3
