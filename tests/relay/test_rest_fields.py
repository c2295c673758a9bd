"""What the relay's REST routes take and answer, found by an audit: a lone surrogate in a
JSON string, fields the minting bodies and the call form do not have, a call's session part
with an ephemeral key, ``?model=`` on a call, a call whose session the transceiver refuses,
hangups forwarded once at most, a refused CORS preflight, keys with a large session. Every
refusal is OpenAI's JSON envelope with a 4xx, never a 500."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from relay.ephemeral import KEY_HEADER_ROOM, call_id_for
from tests.relay.inprocess import (
    REFUSED_INSTRUCTIONS,
    SLOW_INSTRUCTIONS,
    FakeTransceiver,
    RunningRelay,
    fake_transceiver,
    running_relay,
)
from tests.relay.offers import CALLS, assert_envelope, assert_no_call, make_offer, silent_udp_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-rest-fields"
AUTH = {"Authorization": f"Bearer {KEY}"}
SURROGATE = '"\\ud800"'  # JSON text: half a surrogate pair


def _json(template: str) -> str:
    """``template`` with ``S`` standing for :data:`SURROGATE`."""
    return template.replace("S", SURROGATE)


@pytest.fixture
async def relay() -> AsyncIterator[tuple[RunningRelay, FakeTransceiver]]:
    async with fake_transceiver() as fake:
        async with running_relay([fake], api_keys=[KEY], cors_origins=["https://app.test"]) as r:
            yield r, fake


@pytest.fixture
async def offer() -> AsyncIterator[str]:
    with silent_udp_port() as port:
        yield await make_offer(port)


async def _post_json(relay: RunningRelay, path: str, content: str) -> httpx.Response:
    async with relay.http() as http:
        headers = {**AUTH, "Content-Type": "application/json"}
        return await http.post(path, content=content, headers=headers)


async def _call(
    relay: RunningRelay, offer: str, *parts: tuple[str, str], key: str = KEY, query: str = ""
) -> httpx.Response:
    files = [("sdp", (None, offer)), *((name, (None, text)) for name, text in parts)]
    async with relay.http() as http:
        headers = {"Authorization": f"Bearer {key}"}
        return await http.post(CALLS + query, files=files, headers=headers)


async def _hang_up(relay: RunningRelay, reply: httpx.Response) -> None:
    async with relay.http() as http:
        await http.post(reply.headers["location"] + "/hangup", headers=AUTH)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/realtime/client_secrets", _json('{"session":{"instructions":S}}')),
        ("/v1/realtime/client_secrets", _json('{"session":{"type":S}}')),
        ("/v1/realtime/client_secrets", _json('{"session":{S:1}}')),
        ("/v1/realtime/sessions", _json('{"instructions":S}')),
    ],
)
async def test_a_lone_surrogate_is_a_400(relay: Any, path: str, body: str) -> None:
    """It was a 500 (the reply could not encode it), after minting a key in one case."""
    running, _ = relay
    assert_envelope(await _post_json(running, path, body), 400, "invalid_json")


async def test_a_lone_surrogate_in_a_calls_session_part_is_a_400(relay: Any, offer: str) -> None:
    running, _ = relay
    for part in (_json('{"type":S}'), _json('{"instructions":S}')):
        assert_envelope(await _call(running, offer, ("session", part)), 400, "invalid_json")
    async with running.http() as http:
        await assert_no_call(running, http)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/realtime/client_secrets", '{"sesion":{}}', "sesion"),
        ("/v1/realtime/client_secrets", '{"expires_after":{"second":15}}', "expires_after.second"),
        (
            "/v1/realtime/sessions",
            '{"client_secret":{"expires_after":{"second":15}}}',
            "client_secret.expires_after.second",
        ),
        ("/v1/realtime/sessions", '{"client_secret":{"bogus":1}}', "client_secret.bogus"),
    ],
)
async def test_minting_bodies_take_their_own_fields_only(
    relay: Any, path: str, body: str, param: str
) -> None:
    """A misspelt expiry silently became the default (600 s) before."""
    running, _ = relay
    error = assert_envelope(await _post_json(running, path, body), 400, "unknown_parameter")
    assert error["param"] == param


@pytest.mark.parametrize(
    ("parts", "code", "param"),
    [
        ((("sesion", "{}"),), "unknown_parameter", "sesion"),
        ((("session", "{}"), ("session", "{}")), "invalid_multipart", "session"),
    ],
)
async def test_a_calls_form_has_one_sdp_and_one_session_part(
    relay: Any, offer: str, parts: Any, code: str, param: str
) -> None:
    running, _ = relay
    error = assert_envelope(await _call(running, offer, *parts), 400, code)
    assert error["param"] == param
    files = [("sdp", (None, offer)), ("sdp", (None, offer))]
    async with running.http() as http:
        reply = await http.post(CALLS, files=files, headers=AUTH)
        assert assert_envelope(reply, 400, "invalid_multipart")["param"] == "sdp"
        await assert_no_call(running, http)


async def _mint(running: RunningRelay, session: dict[str, Any]) -> str:
    async with running.http() as http:
        reply = await http.post(
            "/v1/realtime/client_secrets", json={"session": session}, headers=AUTH
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["value"])


async def test_a_calls_session_part_updates_the_keys_session(relay: Any, offer: str) -> None:
    """The part is an update of the key's session, as a session.update would be: the key's
    type stays (a transcription key placed a realtime session before), its fields stay."""
    running, fake = relay
    transcription = await _mint(running, {"type": "transcription"})
    reply = await _call(running, offer, ("session", '{"type":"realtime"}'), key=transcription)
    assert assert_envelope(reply, 400, "invalid_value")["param"] == "session.type"
    key = await _mint(running, {"type": "realtime", "audio": {"output": {"voice": "verse"}}})
    reply = await _call(running, offer, ("session", '{"instructions":"from the part"}'), key=key)
    assert reply.status_code == 201, reply.text
    overrides = fake.specs[-1].overrides or {}
    assert overrides["audio"]["output"]["voice"] == "verse"
    assert overrides["instructions"] == "from the part"
    await _hang_up(running, reply)


async def test_a_calls_model_query_is_taken_or_refused(relay: Any, offer: str) -> None:
    running, fake = relay
    reply = await _call(running, offer, ("session", "{}"), query="?model=gpt-realtime-mini")
    assert reply.status_code == 201, reply.text
    assert fake.specs[-1].model == "gpt-realtime-mini"
    await _hang_up(running, reply)
    other = '{"model":"gpt-realtime"}'
    reply = await _call(running, offer, ("session", other), query="?model=gpt-realtime-mini")
    assert assert_envelope(reply, 400, "invalid_value")["param"] == "model"


async def test_a_call_whose_session_the_transceiver_refuses_is_a_400(
    relay: Any, offer: str
) -> None:
    """The transceiver's error (here the fake's, for these instructions) is the answer;
    before, the call got 201 and ended at once, its error lost before the channel opened."""
    running, _ = relay
    part = json.dumps({"instructions": REFUSED_INSTRUCTIONS})
    error = assert_envelope(await _call(running, offer, ("session", part)), 400, "invalid_value")
    assert error["param"] == "session.instructions"
    async with running.http() as http:
        await running.idle()
        await assert_no_call(running, http)


async def test_a_drain_while_a_call_starts_refuses_it(relay: Any, offer: str) -> None:
    """A drain that begins while the relay waits for a call's first event: the call is
    refused (503), not answered after the drain has finished without it."""
    running, fake = relay
    part = json.dumps({"instructions": SLOW_INSTRUCTIONS})
    placing = asyncio.create_task(_call(running, offer, ("session", part)))
    await asyncio.wait_for(fake.starting_slowly.wait(), 10)
    await running.edge.live.drain(0)
    fake.go_on.set()
    assert_envelope(await placing, 503, "server_shutting_down")
    async with running.http() as http:
        await running.idle()
        await assert_no_call(running, http)


async def test_a_hangup_is_forwarded_once_at_most(relay: Any) -> None:
    """A call id naming an alias of this relay (a stale id after --peer-url changed) went
    round until the connections ran out."""
    running, _ = relay
    alias = f"http://localhost:{running.port}"
    call_id = call_id_for(running.edge.signer, alias)
    async with running.http() as http:
        reply = await http.post(f"{CALLS}/{call_id}/hangup", headers=AUTH)
    assert_envelope(reply, 404, "call_not_found")


async def test_a_refused_cors_preflight_is_json(relay: Any) -> None:
    running, _ = relay
    headers = {"Origin": "https://app.test", "Access-Control-Request-Method": "PUT"}
    async with running.http() as http:
        reply = await http.options("/v1/realtime/client_secrets", headers=headers)
        assert_envelope(reply, 400, "cors_preflight_refused")
        headers["Origin"] = "https://elsewhere.test"
        headers["Access-Control-Request-Method"] = "POST"
        reply = await http.options("/v1/realtime/client_secrets", headers=headers)
        assert_envelope(reply, 400, "cors_preflight_refused")


async def test_a_key_with_long_instructions_works_and_one_too_large_is_refused(
    relay: Any, offer: str
) -> None:
    """The key carries its session, compressed; it must fit the one header it travels in,
    within the relay's header bound (64 KiB by default). Past 8 KiB a WebSocket handshake's
    line was refused (431) where the calls route took the key."""
    running, _ = relay
    long = secrets.token_urlsafe(15_000)  # 20,000 characters that do not compress
    key = await _mint(running, {"instructions": long})
    assert 20_000 < len(key) <= 65536 - KEY_HEADER_ROOM
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(running.ws_url + "?model=gpt-realtime", additional_headers=headers) as ws:
        assert "session.created" in str(await ws.recv())
    reply = await _call(running, offer, key=key)
    assert reply.status_code == 201, reply.text
    await _hang_up(running, reply)
    noise = secrets.token_urlsafe(60_000)  # 80,000 characters
    async with running.http() as http:
        reply = await http.post(
            "/v1/realtime/client_secrets", json={"session": {"instructions": noise}}, headers=AUTH
        )
    error = assert_envelope(reply, 400, "session_too_large")
    assert error["param"] == "session"


@pytest.mark.parametrize(
    ("action", "body", "param"),
    [("reject", {"status": 486}, "status"), ("refer", {"target": "tel:+1"}, "target")],
)
async def test_sip_call_control_takes_its_own_fields_only(
    action: str, body: dict[str, Any], param: str
) -> None:
    """A misspelt ``status_code`` rejected with the default 603 before."""
    async with running_relay(api_keys=[KEY], sip_listen="127.0.0.1:0") as running:
        async with running.http() as http:
            reply = await http.post(f"{CALLS}/sip_x/{action}", json=body, headers=AUTH)
    assert assert_envelope(reply, 400, "unknown_parameter")["param"] == param
