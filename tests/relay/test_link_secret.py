"""The relay <-> transceiver link is authenticated with a shared secret: a real transceiver
(mock backend) in this process answers only requests that carry it, the relay's pool sends it
on every request, and the relay's open ``/healthz`` names no internal address."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.relay.inprocess import HOST, running_relay
from tests.servers import free_port
from transceiver.protocol.contract import SessionSpec
from transceiver.server import TransceiverServer
from transceiver.settings import TransceiverSettings
from transceiver.startup import LinkSecretMissing, build_backend
from transceiver.startup import check_link_secret as check_secret

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "the-link-secret-of-these-tests"
KEY = "sk-link-test"
PATHS = ["/load", "/metrics", "/v1/models", "/v1/sessions", "/no-such-path"]


@dataclass
class Transceiver:
    server: TransceiverServer
    port: int

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"


@contextlib.asynccontextmanager
async def transceiver(secret: str | None = SECRET) -> AsyncIterator[Transceiver]:
    """A real transceiver (mock backend) on 127.0.0.1; ``secret=None``: run insecure."""
    settings = TransceiverSettings(
        backend="mock",
        host=HOST,
        port=0,
        link_secret=secret,
        insecure_no_link_secret=secret is None,
        mock_first_delta_ms=0,
    )
    check_secret(settings)
    server = TransceiverServer(settings, build_backend(settings))
    (ws_server,) = await server.start()
    try:
        yield Transceiver(server, int(next(iter(ws_server.sockets)).getsockname()[1]))
    finally:
        ws_server.close()
        await ws_server.wait_closed()
        server.lag.stop()
        await server.backend.aclose()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def assert_refused(reply: httpx.Response) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"] == "Bearer"
    error = reply.json()["error"]
    assert error["code"] == "invalid_link_secret" and error["type"] == "invalid_request_error"
    assert SECRET not in reply.text


async def test_the_transceiver_answers_only_requests_with_the_secret() -> None:
    async with transceiver() as t, httpx.AsyncClient(base_url=t.http_url, timeout=5) as http:
        health = await http.get("/healthz")  # open, for container health checks
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        wrong = [
            {},
            bearer("not-the-secret"),
            bearer(SECRET[:-1]),
            {"Authorization": SECRET},
            {"Authorization": f"Basic {SECRET}"},
        ]
        for path in PATHS:
            for headers in wrong:
                assert_refused(await http.get(path, headers=headers))
            # Two Authorization headers, one of them right: refused too.
            twice = [("Authorization", f"Bearer {SECRET}"), ("Authorization", "Bearer x")]
            assert_refused(await http.get(path, headers=twice))
        load = await http.get("/load", headers={"authorization": f"bearer {SECRET}"})
        assert load.status_code == 200 and load.json()["sessions"] == 0
        assert (await http.get("/metrics", headers=bearer(SECRET))).status_code == 200
        missing = await http.get("/no-such-path", headers=bearer(SECRET))
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{t.url}/v1/sessions"):
                pass
        assert refused.value.response.status_code == 401
        async with connect(f"{t.url}/v1/sessions", additional_headers=bearer(SECRET)) as ws:
            await ws.send(SessionSpec(model="gpt-realtime").encode())
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_requests_that_are_no_handshake_get_json_or_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain GET of a WebSocket path is a JSON 426 (it was websockets' plain text); a
    request websockets cannot take (a POST) is closed unanswered as before, logged on one
    INFO line where each was an ERROR with its traceback."""
    caplog.set_level(logging.INFO)
    async with transceiver() as t, httpx.AsyncClient(base_url=t.http_url, timeout=5) as http:
        for path in ("/v1/sessions", "/v1/link"):
            reply = await http.get(path, headers=bearer(SECRET))
            assert reply.status_code == 426 and reply.headers["upgrade"] == "websocket"
            assert reply.json()["error"]["code"] == "upgrade_required"
        with pytest.raises(httpx.HTTPError):
            await http.post("/v1/sessions", headers=bearer(SECRET), content=b"{}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    refused = [r for r in caplog.records if "no WebSocket handshake" in r.getMessage()]
    assert refused and refused[0].levelno == logging.INFO and refused[0].exc_info is None


async def test_every_plain_http_answer_says_the_connection_closes() -> None:
    """websockets closes the connection after any answer but an upgrade: the answer says so,
    so a client keeping connections alive opens a new one for its next request."""
    async with transceiver() as t, httpx.AsyncClient(base_url=t.http_url, timeout=5) as http:
        for _ in range(10):
            for path, headers in [
                ("/healthz", {}),
                ("/load", {}),  # 401
                ("/load", bearer(SECRET)),
                ("/metrics", bearer(SECRET)),
                ("/nowhere", bearer(SECRET)),  # 404
            ]:
                reply = await http.get(path, headers=headers)
                assert reply.headers["connection"] == "close", (path, reply.status_code)


async def test_a_transceiver_run_insecure_takes_requests_without_a_secret() -> None:
    async with transceiver(secret=None) as t:
        async with httpx.AsyncClient(base_url=t.http_url, timeout=5) as http:
            assert (await http.get("/load")).status_code == 200
        async with connect(f"{t.url}/v1/sessions") as ws:
            await ws.send(SessionSpec(model="gpt-realtime").encode())
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_the_relay_sends_the_secret_on_every_request() -> None:
    async with transceiver() as t, running_relay([t], link_secret=SECRET) as relay:  # type: ignore[list-item]
        async with connect(relay.ws_url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        async with relay.http() as http:
            models = (await http.get("/v1/models")).json()
            assert "gpt-realtime" in [m["id"] for m in models["data"]]
            health = (await http.get("/healthz")).json()
            assert health["transceivers"] == {"healthy": 1, "total": 1}


async def test_a_relay_with_another_secret_is_refused_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="relay.pool")
    async with transceiver() as t, running_relay([t], link_secret="another") as relay:  # type: ignore[list-item]
        for _ in range(2):
            async with connect(relay.ws_url) as ws:
                event = json.loads(await ws.recv())
                assert event["error"]["code"] == "session_limit_reached"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
        assert t.server.sessions == 0
        async with relay.http() as http:
            health = (await http.get("/healthz")).json()
            assert health["transceivers"] == {"healthy": 0, "total": 1}
            (member,) = (await http.get("/status")).json()["transceivers"]
            assert (member["healthy"], member["refused_link_secret"]) == (False, True)
            assert (await http.get("/v1/models")).json()["data"] == []
    said = [r.getMessage() for r in caplog.records if "refused the link secret" in r.message]
    assert len(said) == 1 and "RELAY_LINK_SECRET" in said[0]  # once, not per attempt


async def test_healthz_names_no_address_and_status_wants_an_api_key() -> None:
    async with (
        transceiver() as t,
        running_relay([t], link_secret=SECRET, api_keys=[KEY]) as relay,  # type: ignore[list-item]
        relay.http() as http,
    ):
        health = await http.get("/healthz")
        assert health.status_code == 200 and set(health.json()) == {
            "status",
            "draining",
            "sessions",
            "transceivers",
        }
        assert str(t.port) not in health.text and "ws://" not in health.text
        assert (await http.get("/status")).status_code == 401
        assert (await http.get("/status", headers=bearer("sk-wrong"))).status_code == 401
        minted = await http.post("/v1/realtime/client_secrets", headers=bearer(KEY), json={})
        ephemeral = minted.json()["value"]
        assert (await http.get("/status", headers=bearer(ephemeral))).status_code == 401
        status = await http.get("/status", headers=bearer(KEY))
        assert [m["url"] for m in status.json()["transceivers"]] == [t.url]
        assert SECRET not in status.text


async def test_a_transceiver_without_a_secret_does_not_start() -> None:
    with pytest.raises(LinkSecretMissing, match="RELAY_LINK_SECRET"):
        check_secret(TransceiverSettings(link_secret=None))
    unset = ("RELAY_LINK_SECRET", "RELAY_INSECURE_NO_LINK_SECRET")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    argv = ["-m", "transceiver", "--backend", "mock", "--port", str(free_port())]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=env, stdout=PIPE, stderr=PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, stderr
    said = stderr.decode()
    assert "RELAY_LINK_SECRET" in said and "--insecure-no-link-secret" in said
    assert "Traceback" not in said


async def test_only_unparsable_handshakes_are_quietened() -> None:
    """The filter turns websockets' ERROR for a request it could not parse into one INFO
    line; a failure of the transceiver's own code (process_request raising) stays an ERROR
    with its traceback."""
    from websockets.exceptions import InvalidMessage

    from transceiver.server import _RefusedRequests

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            info = sys.exc_info()
        return logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "opening handshake failed", (), info
        )

    quiet = record(InvalidMessage("did not receive a valid HTTP request"))
    _RefusedRequests().filter(quiet)
    assert (quiet.levelno, quiet.exc_info) == (logging.INFO, None)
    bug = record(RuntimeError("a bug"))
    _RefusedRequests().filter(bug)
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
