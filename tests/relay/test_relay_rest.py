"""The relay's REST surface in process: every error is the OpenAI JSON envelope (unknown
routes, wrong methods, validation, credentials, bodies), minting, health and models."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.ephemeral import KeySigner
from relay.settings import RelaySettings
from tests.relay.inprocess import fake_transceiver, running_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-rest-test"
SECRET = "a-secret-for-the-rest-tests"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The app without a server (no transceiver: nothing here places a session)."""
    app = create_app(RelaySettings(api_keys=[KEY], key_secret=SECRET))

    @app.get("/test/validation")
    async def probe(count: int) -> dict[str, int]:  # a route with a typed parameter
        return {"count": count}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
        yield client


def assert_envelope(reply: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_unknown_routes_and_wrong_methods(http: httpx.AsyncClient) -> None:
    error = assert_envelope(await http.get("/v1/nothing/here"), 404, "not_found")
    assert error["message"] == "Invalid URL (GET /v1/nothing/here)"
    assert error["type"] == "invalid_request_error"
    assert_envelope(await http.post("/v1/chat/completions", json={}), 404, "not_found")
    reply = await http.get("/v1/realtime/client_secrets")
    assert_envelope(reply, 405, "method_not_allowed")
    assert reply.headers["allow"] == "POST"
    assert_envelope(await http.delete("/healthz"), 405, "method_not_allowed")


async def test_the_playground_page_and_its_files_need_no_key(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, media_type in [
        ("playground.js", "text/javascript"),
        ("playground-ui.js", "text/javascript"),
        ("playground.css", "text/css"),
    ]:
        assert f"/playground/{name}" in page.text
        reply = await http.get(f"/playground/{name}")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(media_type)
        assert all(
            url.startswith("/") for url in re.findall(r"fetch\(\s*[\"'`]([^\"'`]*)", reply.text)
        )
    assert all(url.startswith("/") for url in re.findall(r'(?:src|href)="([^"]*)"', page.text))
    for name in ["index.html", "..%2Frest.py", "nothing.js"]:
        assert_envelope(await http.get(f"/playground/{name}"), 404, "not_found")


async def test_validation_errors(http: httpx.AsyncClient) -> None:
    error = assert_envelope(await http.get("/test/validation?count=many"), 422, "invalid_request")
    assert error["param"] == "count"
    error = assert_envelope(await http.get("/test/validation"), 422, "invalid_request")
    assert error["param"] == "count"
    assert (await http.get("/test/validation?count=3")).json() == {"count": 3}


async def test_minting_needs_an_api_key(http: httpx.AsyncClient) -> None:
    for path in ("/v1/realtime/client_secrets", "/v1/realtime/sessions"):
        error = assert_envelope(await http.post(path, json={}), 401, "invalid_api_key")
        assert error["message"] == "Incorrect API key provided."
        reply = await http.post(path, headers=bearer("sk-wrong"), content="not json")
        assert_envelope(reply, 401, "invalid_api_key")  # credentials before the body
    minted = await http.post("/v1/realtime/client_secrets", headers=bearer(KEY), json={})
    ephemeral = minted.json()["value"]
    reply = await http.post("/v1/realtime/client_secrets", headers=bearer(ephemeral), json={})
    assert_envelope(reply, 401, "invalid_api_key")  # an ephemeral key cannot mint


async def test_an_ephemeral_key_cannot_mint_even_without_api_keys() -> None:
    app = create_app(RelaySettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as http:
        path = "/v1/realtime/client_secrets"
        ephemeral = (await http.post(path, json={})).json()["value"]
        assert_envelope(await http.post(path, headers=bearer(ephemeral)), 401, "invalid_api_key")


async def test_bad_minting_bodies(http: httpx.AsyncClient) -> None:
    path, headers = "/v1/realtime/client_secrets", bearer(KEY)
    assert_envelope(await http.post(path, headers=headers, content="{"), 400, "invalid_json")
    assert_envelope(await http.post(path, headers=headers, json=[1]), 400, "invalid_request")
    for body, param in (
        ({"expires_after": {"seconds": 5}}, "expires_after.seconds"),
        ({"session": {"type": "video"}}, "session.type"),
    ):
        reply = await http.post(path, headers=headers, json=body)
        assert assert_envelope(reply, 400, "invalid_value")["param"] == param


async def test_minted_keys(http: httpx.AsyncClient) -> None:
    body = {"expires_after": {"seconds": 120}, "session": {"type": "transcription"}}
    reply = await http.post("/v1/realtime/client_secrets", headers=bearer(KEY), json=body)
    assert reply.status_code == 200, reply.text
    minted = reply.json()
    assert minted["session"]["object"] == "realtime.transcription_session"
    verified = KeySigner(SECRET).verify(minted["value"])
    assert verified.expires_at == minted["expires_at"]
    assert verified.session["type"] == "transcription" and verified.owner is not None
    reply = await http.post(
        "/v1/realtime/sessions", headers=bearer(KEY), json={"instructions": "Hi."}
    )
    beta = reply.json()
    assert beta["object"] == "realtime.session" and beta["instructions"] == "Hi."
    assert beta["client_secret"]["value"].startswith("ek_")
    assert KeySigner(SECRET).verify(beta["client_secret"]["value"]).owner == verified.owner


async def test_hangup_needs_an_api_key(http: httpx.AsyncClient) -> None:
    path = "/v1/realtime/calls/rtc_x/hangup"
    assert_envelope(await http.post(path), 401, "invalid_api_key")
    error = assert_envelope(await http.post(path, headers=bearer(KEY)), 404, "call_not_found")
    assert error["message"] == "Call 'rtc_x' not found."


async def test_metrics_and_status_need_an_api_key(http: httpx.AsyncClient) -> None:
    """They name the transceivers: not for anyone who can reach the port."""
    for path in ("/metrics", "/status"):
        assert_envelope(await http.get(path), 401, "invalid_api_key")
        assert (await http.get(path, headers=bearer(KEY))).status_code == 200
    minted = await http.post("/v1/realtime/client_secrets", headers=bearer(KEY), json={})
    ephemeral = minted.json()["value"]
    assert_envelope(await http.get("/metrics", headers=bearer(ephemeral)), 401, "invalid_api_key")
    assert (await http.get("/healthz")).status_code == 200  # for load balancers, open


async def test_calls_check_credentials_and_the_offer(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/realtime/calls", content="v=0")
    assert_envelope(reply, 401, "invalid_api_key")
    forged = KeySigner("not-the-secret").mint({"type": "realtime"}, 60)
    reply = await http.post("/v1/realtime/calls", headers=bearer(forged), content="v=0")
    error = assert_envelope(reply, 401, "invalid_api_key")
    assert error["message"] == "Ephemeral key: unknown ephemeral key."
    reply = await http.post("/v1/realtime/calls", headers=bearer(KEY), content="no offer")
    assert_envelope(reply, 400, "invalid_sdp")
    files = {"sdp": (None, "v=0"), "session": (None, "{")}
    reply = await http.post("/v1/realtime/calls", headers=bearer(KEY), files=files)
    assert_envelope(reply, 400, "invalid_json")


async def test_health_and_models_from_the_transceivers() -> None:
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        async with relay.http() as http:
            health = await http.get("/healthz")
            assert health.json() == {
                "status": "ok",
                "draining": False,
                "sessions": 0,
                "transceivers": {"healthy": 1, "total": 1},
            }
            assert "127.0.0.1" not in health.text  # open to all: no internal address
            status = (await http.get("/status")).json()  # no --api-keys: any caller
            assert [m["url"] for m in status["transceivers"]] == [fake.url]
            models = (await http.get("/v1/models")).json()
            assert models["object"] == "list"
            assert [m["id"] for m in models["data"]] == ["gpt-realtime"]
            metrics = await http.get("/metrics")
            assert "realtime_relay_active_sessions" in metrics.text
