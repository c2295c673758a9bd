"""``WS /v1/realtime`` in process, against fake transceivers: the session spec the relay
sends, authentication, per-key limits, placement refusals, a transceiver lost mid-session,
close codes passed through, and drain."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.ephemeral import KeySigner
from tests.relay.inprocess import RunningRelay, fake_transceiver, running_relay
from tests.waiting import eventually
from transceiver.protocol.contract import Dialect, SessionKind, Transport

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY, OTHER = "sk-inprocess-a", "sk-inprocess-b"
SECRET = "a-secret-for-the-in-process-tests"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def next_event(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))  # type: ignore[no-any-return]


async def ended_with(ws: ClientConnection, timeout_s: float = 10) -> tuple[list[str], int | None]:
    """Read until the relay closes: the codes of the error events, and the close code."""
    codes: list[str] = []
    try:
        while True:
            event = await next_event(ws, timeout_s)
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    except ConnectionClosed as exc:
        return codes, exc.rcvd.code if exc.rcvd else None


async def refused(relay: RunningRelay, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body a WebSocket handshake was refused with."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def mint(relay: RunningRelay, key: str, session: dict[str, Any]) -> str:
    async with relay.http() as http:
        reply = await http.post(
            "/v1/realtime/client_secrets", headers=bearer(key), json={"session": session}
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["value"])


async def test_the_spec_sent_to_the_transceiver(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.admission")
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        headers = {"OpenAI-Beta": "realtime=v1"}
        async with connect(f"{relay.ws_url}?model=gpt-x", additional_headers=headers) as ws:
            created = await next_event(ws)
            assert created["type"] == "session.created"
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await next_event(ws))["type"] == "input_audio_buffer.clear"  # passed as is
        spec = fake.specs[0]
        assert (spec.kind, spec.model, spec.dialect) == (
            SessionKind.REALTIME,
            "gpt-x",
            Dialect.BETA,
        )
        assert spec.transport is Transport.WEBSOCKET and spec.overrides is None
        assert spec.conn is not None and spec.conn.startswith("conn_")
        assert created["conn"] == spec.conn
        protocols: Any = ["realtime", "openai-beta.realtime-v1"]
        url = f"{relay.ws_url}?intent=transcription&model=ignored"
        async with connect(url, subprotocols=protocols) as ws:
            assert ws.subprotocol == "realtime"
            await next_event(ws)
        spec = fake.specs[1]
        assert (spec.kind, spec.model, spec.dialect) == (
            SessionKind.TRANSCRIPTION,
            None,
            Dialect.BETA,
        )
        async with connect(relay.ws_url) as ws:
            await next_event(ws)
        assert (fake.specs[2].model, fake.specs[2].dialect) == (None, Dialect.GA)
        await relay.idle()
        assert relay.metric("sessions_total", transport="ws") == 3
        assert relay.metric("active_sessions", transport="ws") == 0
    logged = [r.getMessage() for r in caplog.records]
    first = fake.specs[0].conn
    assert any(f"session.placed conn={first}" in line for line in logged), logged
    assert any(f"session.closed conn={first}" in line for line in logged), logged


async def test_an_ephemeral_key_carries_its_session() -> None:
    async with fake_transceiver() as fake, running_relay([fake], api_keys=[KEY]) as relay:
        session = {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Be brief."}
        key = await mint(relay, KEY, session)
        async with connect(relay.ws_url, additional_headers=bearer(key)) as ws:
            await next_event(ws)
        spec = fake.specs[0]
        assert spec.model == "gpt-realtime-mini" and spec.kind is SessionKind.REALTIME
        assert spec.overrides is not None and spec.overrides["instructions"] == "Be brief."
        key = await mint(relay, KEY, {"type": "transcription"})
        async with connect(f"{relay.ws_url}?model=x", additional_headers=bearer(key)) as ws:
            await next_event(ws)
        spec = fake.specs[1]
        assert spec.kind is SessionKind.TRANSCRIPTION and spec.model is None
        assert spec.overrides is not None and spec.overrides["type"] == "transcription"


async def test_bad_credentials_are_refused_before_the_upgrade() -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY], key_secret=SECRET) as relay,
    ):
        status, body = await refused(relay, relay.ws_url, additional_headers=bearer("sk-wrong"))
        assert status == 401
        assert body["error"] == {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        status, body = await refused(relay, relay.ws_url)  # no key at all
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        forged = KeySigner("another-secret").mint({"type": "realtime"}, 60)
        status, body = await refused(relay, relay.ws_url, additional_headers=bearer(forged))
        assert status == 401
        assert body["error"]["message"] == "Ephemeral key: unknown ephemeral key."
        expired = KeySigner(SECRET).mint({"type": "realtime"}, 60, now=1000.0)
        status, body = await refused(relay, relay.ws_url, additional_headers=bearer(expired))
        assert body["error"]["message"] == "Ephemeral key: expired ephemeral key."
        protocols: Any = ["realtime", "openai-insecure-api-key.sk-wrong"]
        status, body = await refused(relay, relay.ws_url, subprotocols=protocols)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]  # as browsers send it
        async with connect(relay.ws_url, subprotocols=protocols):
            pass
        assert len(fake.specs) == 1  # only the accepted connection was placed


async def test_per_key_session_limit() -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY, OTHER], max_sessions_per_key=1) as relay,
    ):
        async with connect(relay.ws_url, additional_headers=bearer(KEY)) as first:
            await next_event(first)
            async with connect(relay.ws_url, additional_headers=bearer(KEY)) as second:
                assert await ended_with(second) == (["session_limit_reached"], 1013)
            async with connect(relay.ws_url, additional_headers=bearer(OTHER)) as other:
                assert (await next_event(other))["type"] == "session.created"
            key = await mint(relay, KEY, {"type": "realtime"})  # shares its minter's limit
            async with connect(relay.ws_url, additional_headers=bearer(key)) as minted:
                assert await ended_with(minted) == (["session_limit_reached"], 1013)
        assert len(fake.specs) == 2  # refused sessions never reach a transceiver
        assert relay.metric("errors_total", code="session_limit_reached") == 2
        await relay.idle()  # the key's slot is released with its session
        async with connect(relay.ws_url, additional_headers=bearer(KEY)) as again:
            assert (await next_event(again))["type"] == "session.created"


async def test_no_transceiver_takes_the_session() -> None:
    async with fake_transceiver(refusing=True) as full, running_relay([full]) as relay:
        async with connect(relay.ws_url) as ws:
            event = await next_event(ws)
            assert event["type"] == "error"
            assert event["error"]["code"] == "session_limit_reached"
            assert event["error"]["type"] == "server_error"
            assert await ended_with(ws) == ([], 1013)
        assert relay.metric("placement_refusals_total", transceiver="none") == 1
        assert relay.metric("placement_refusals_total", transceiver=full.url) == 1
        assert relay.metric("sessions_total", transport="ws") == 0
        async with relay.http() as http:
            assert (await http.get("/healthz")).json()["sessions"] == 0


async def test_a_transceiver_lost_mid_session() -> None:
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        async with connect(relay.ws_url) as ws:
            await next_event(ws)
            fake.kill()
            assert await ended_with(ws) == (["transceiver_unavailable"], 1011)
        await relay.idle()
        assert relay.metric("errors_total", code="transceiver_unavailable") == 1
        assert relay.metric("active_sessions", transport="ws") == 0


async def test_the_transceivers_close_code_is_passed_on() -> None:
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        async with connect(relay.ws_url) as ws:
            await next_event(ws)
            await ws.send(json.dumps({"type": "test.close", "code": 4001}))
            assert await ended_with(ws) == ([], 4001)
        await relay.idle()


async def test_drain_refuses_new_sessions_and_closes_the_rest() -> None:
    async with fake_transceiver() as fake, running_relay([fake], api_keys=[KEY]) as relay:
        live = relay.edge.live
        async with connect(relay.ws_url, additional_headers=bearer(KEY)) as ws:
            await next_event(ws)
            draining = asyncio.create_task(live.drain(60))
            await eventually(lambda: live.draining, what="draining")
            async with relay.http() as http:
                health = await http.get("/healthz")
                assert health.status_code == 503 and health.json()["status"] == "draining"
                call = await http.post("/v1/realtime/calls", content="v=0")  # before auth
                assert call.status_code == 503
                assert call.json()["error"]["code"] == "server_shutting_down"
            status, body = await refused(relay, relay.ws_url, additional_headers=bearer(KEY))
            assert (status, body["error"]["code"]) == (503, "server_shutting_down")
            # A sideband to a call is still served while draining: this one does not exist.
            url = f"{relay.ws_url}?call_id=rtc_unknown"
            status, body = await refused(relay, url, additional_headers=bearer(KEY))
            assert (status, body["error"]["code"]) == (404, "call_not_found")
            # The running session goes on until the deadline...
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await next_event(ws))["type"] == "input_audio_buffer.clear"
            await live.drain(0)  # ...which comes now
            assert await ended_with(ws) == (["server_shutting_down"], 1012)
            await asyncio.wait_for(draining, 10)
        await relay.idle()
        assert len(fake.specs) == 1
