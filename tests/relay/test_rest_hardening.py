"""The REST endpoints under attack-style input: no 500s, bounded bodies, strict types.

Each case is one found by an attacker-style run against ``serve --backend mock --api-keys``:
deeply nested JSON and tool schemas, a ``session.model`` of the wrong type, malformed
``expires_after`` / ``client_secret`` / ``modalities``, strings for numbers, huge bodies
(declared or chunked), and ``GET /v1/models`` without a key. Every error is OpenAI's JSON
envelope (https://platform.openai.com/docs/guides/error-codes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.settings import RelaySettings
from tests.relay.inprocess import running_relay
from transceiver.protocol.config import apply_session_update, default_config
from transceiver.protocol.contract import SessionKind
from transceiver.protocol.errors import ClientError
from transceiver.protocol.items import normalize_item

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-hardening"
HEADERS = {"Authorization": f"Bearer {KEY}"}
GA, BETA, BETA_TRANSCRIPTION = (
    "/v1/realtime/client_secrets",
    "/v1/realtime/sessions",
    "/v1/realtime/transcription_sessions",
)
PATHS = (GA, BETA, BETA_TRANSCRIPTION)
LIMIT = 4096  # --max-body-bytes in the body-limit tests


def client_for(**settings: Any) -> httpx.AsyncClient:
    app = create_app(RelaySettings(api_keys=[KEY], key_secret="hardening", **settings))
    transport = httpx.ASGITransport(app=app)  # an exception escaping the app fails the test
    return httpx.AsyncClient(transport=transport, base_url="http://relay.test")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for() as client:
        yield client


def error_of(reply: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}}
    return node


def vad(**fields: Any) -> dict[str, Any]:
    return {"audio": {"input": {"turn_detection": {"type": "server_vad", **fields}}}}


# -- nesting -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_json_nested_past_the_parser_limit(http: httpx.AsyncClient, path: str) -> None:
    reply = await http.post(path, headers=HEADERS, content="[" * 5000 + "]" * 5000)
    assert "deeper than 100 levels" in error_of(reply)["message"]
    reply = await http.post(path, headers=HEADERS, content='{"a":' * 5000 + "1" + "}" * 5000)
    assert error_of(reply)["code"] == "invalid_request"


@pytest.mark.parametrize("path", PATHS)
async def test_bodies_nested_past_the_event_bound(http: httpx.AsyncClient, path: str) -> None:
    body: Any = 1
    for _ in range(150):  # parses, but nests deeper than a WebSocket event may
        body = [body]
    reply = await http.post(path, headers=HEADERS, json={"metadata": body})
    assert error_of(reply)["message"] == "The body nests objects and arrays deeper than 100 levels."


async def test_tool_schemas_hundreds_of_levels_deep(http: httpx.AsyncClient) -> None:
    tool = {"type": "function", "name": "f", "parameters": nested(400)}
    reply = await http.post(GA, headers=HEADERS, json={"session": {"tools": [tool]}})
    assert "deeper than 100 levels" in error_of(reply)["message"]
    reply = await http.post(BETA, headers=HEADERS, json={"tools": [tool]})
    assert "deeper than 100 levels" in error_of(reply)["message"]
    tool["parameters"] = nested(20)  # a real schema's depth is fine
    reply = await http.post(GA, headers=HEADERS, json={"session": {"tools": [tool]}})
    assert reply.status_code == 200, reply.text


async def test_the_core_refuses_deep_sessions_and_items_itself() -> None:
    """A call's session or a key's reaches the core without the REST body's check."""
    default = default_config(SessionKind.REALTIME, None)
    tool = {"type": "function", "name": "f", "parameters": nested(400)}
    with pytest.raises(ClientError, match="deeper than 100 levels") as caught:
        apply_session_update(default, {"tools": [tool]})
    assert caught.value.param == "session"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    item["metadata"] = nested(400)
    with pytest.raises(ClientError, match="deeper than 100 levels"):
        normalize_item(item)


# -- wrong types ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [5, ["x"], 0, False, {"id": "x"}])
async def test_a_model_of_the_wrong_type(http: httpx.AsyncClient, model: Any) -> None:
    reply = await http.post(GA, headers=HEADERS, json={"session": {"model": model}})
    assert error_of(reply)["param"] == "session.model"
    reply = await http.post(BETA, headers=HEADERS, json={"model": model})
    assert error_of(reply)["param"] == "session.model"


@pytest.mark.parametrize("after", [[], 0, "", False, "600", [600]])
async def test_expires_after_must_be_an_object(http: httpx.AsyncClient, after: Any) -> None:
    reply = await http.post(GA, headers=HEADERS, json={"expires_after": after})
    assert error_of(reply)["param"] == "expires_after"


async def test_expires_after_left_out_or_null_is_the_default(http: httpx.AsyncClient) -> None:
    for body in ({}, {"expires_after": None}, {"expires_after": {}}):
        reply = await http.post(GA, headers=HEADERS, json=body)
        assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("modalities", [5, [], ["video"], "audio", [1], ["text", None], {}])
@pytest.mark.parametrize("path", [BETA, BETA_TRANSCRIPTION])
async def test_beta_modalities_must_be_a_list_of_modalities(
    http: httpx.AsyncClient, path: str, modalities: Any
) -> None:
    reply = await http.post(path, headers=HEADERS, json={"modalities": modalities})
    error = error_of(reply)
    assert error["param"] == "session.modalities" and "modalities" in error["message"]


async def test_beta_modalities_that_are_right(http: httpx.AsyncClient) -> None:
    for modalities, shown in (
        (["text"], ["text"]),
        (["audio", "text"], ["audio", "text"]),
        (None, ["audio", "text"]),  # null: left as it is
    ):
        reply = await http.post(BETA, headers=HEADERS, json={"modalities": modalities})
        assert reply.status_code == 200, reply.text
        assert reply.json()["modalities"] == shown


@pytest.mark.parametrize(
    ("secret", "param"),
    [
        (5, "client_secret"),
        ("ek_x", "client_secret"),
        ([], "client_secret"),
        (True, "client_secret"),
        ({"expires_after": []}, "client_secret.expires_after"),
        ({"expires_after": {"seconds": 5}}, "client_secret.expires_after.seconds"),
        ({"expires_after": {"anchor": "now"}}, "client_secret.expires_after.anchor"),
    ],
)
async def test_a_malformed_beta_client_secret(
    http: httpx.AsyncClient, secret: Any, param: str
) -> None:
    for path in (BETA, BETA_TRANSCRIPTION):
        reply = await http.post(path, headers=HEADERS, json={"client_secret": secret})
        assert error_of(reply)["param"] == param


async def test_a_beta_client_secret_that_is_right(http: httpx.AsyncClient) -> None:
    secret = {"expires_after": {"anchor": "created_at", "seconds": 120}}
    reply = await http.post(BETA, headers=HEADERS, json={"client_secret": secret})
    assert reply.status_code == 200, reply.text
    assert reply.json()["client_secret"]["value"].startswith("ek_")
    assert (await http.post(BETA, headers=HEADERS, json={"client_secret": None})).status_code == 200


SILENCE = "session.audio.input.turn_detection.silence_duration_ms"


@pytest.mark.parametrize(
    ("session", "param"),
    [
        (vad(silence_duration_ms="500"), SILENCE),  # a string is not a number
        (vad(silence_duration_ms=500.0), SILENCE),  # a decimal is not an integer
        (vad(silence_duration_ms=True), SILENCE),  # nor is a bool
        (vad(threshold="0.5"), "session.audio.input.turn_detection.threshold"),
        (vad(create_response=1), "session.audio.input.turn_detection.create_response"),
        ({"instructions": 5}, "session.instructions"),  # a number is not a string
        ({"audio": {"output": {"voice": 1}}}, "session.audio.output.voice"),
        ({"audio": {"output": {"speed": "1.0"}}}, "session.audio.output.speed"),
        ({"max_output_tokens": "100"}, "session.max_output_tokens"),
        ({"max_output_tokens": 100.0}, "session.max_output_tokens"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": "24000"}}}}, None),
    ],
)
async def test_strict_types(http: httpx.AsyncClient, session: dict[str, Any], param: Any) -> None:
    reply = await http.post(GA, headers=HEADERS, json={"session": session})
    error = error_of(reply)
    assert error["code"] == "invalid_value"
    if param is not None:
        assert error["param"] == param


async def test_numbers_of_the_right_type(http: httpx.AsyncClient) -> None:
    session = {
        **vad(silence_duration_ms=700, threshold=1),  # an integer is a number
        "max_output_tokens": 100,
    }
    session["audio"]["output"] = {"speed": 1, "format": {"type": "audio/pcmu"}}
    reply = await http.post(GA, headers=HEADERS, json={"session": session})
    assert reply.status_code == 200, reply.text
    shown = reply.json()["session"]
    assert shown["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
    assert shown["audio"]["output"]["speed"] == 1.0
    assert shown["audio"]["output"]["format"] == {"type": "audio/pcmu"}


async def test_error_messages_echo_values_cut_short(http: httpx.AsyncClient) -> None:
    for body in (
        {"session": {"type": "x" * 100_000}},
        {"session": {"instructions": 10**1000}},
        {"expires_after": {"seconds": 10**1000}},
        {"session": {"voice": ["y" * 100_000]}},
    ):
        reply = await http.post(GA, headers=HEADERS, json=body)
        assert len(error_of(reply)["message"]) < 300


# -- sizes ---------------------------------------------------------------------------


class Upload:
    """A request body of ``chunks`` KiB, counting how many the server pulled."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * 1024


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    async with client_for(max_body_bytes=LIMIT) as http:
        upload = Upload(50 * 1024)  # 50 MiB, declared
        headers = {**HEADERS, "Content-Length": str(50 * 1024 * 1024)}
        error = error_of(await http.post(GA, headers=headers, content=upload), 413)
        assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]
        assert upload.pulled == 0


async def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    async with client_for(max_body_bytes=LIMIT) as http:
        for path in PATHS:
            upload = Upload(50 * 1024)  # no Content-Length: Transfer-Encoding: chunked
            error = error_of(await http.post(path, headers=HEADERS, content=upload), 413)
            assert error["code"] == "request_too_large"
            assert upload.pulled == LIMIT // 1024 + 1
        body = json.dumps({"session": {"instructions": "x" * 100}}).encode()
        ok = await http.post(GA, headers=HEADERS, content=body.ljust(LIMIT))  # at the limit
        assert ok.status_code == 200, ok.text


async def test_big_instructions_make_no_big_keys(http: httpx.AsyncClient) -> None:
    """The default limit (2 MiB) bounds what a key can carry."""
    body = {"session": {"instructions": "x" * (5 * 1024 * 1024)}}
    assert error_of(await http.post(GA, headers=HEADERS, json=body), 413)
    body = {"session": {"instructions": "x" * (1024 * 1024)}}
    assert (await http.post(GA, headers=HEADERS, json=body)).status_code == 200


async def test_a_bad_content_length(http: httpx.AsyncClient) -> None:
    headers = {**HEADERS, "Content-Length": "lots"}
    reply = await http.post(GA, headers=headers, content=b"{}")
    assert error_of(reply)["code"] == "invalid_request"


async def raw_exchange(port: int, head: str, body: list[bytes]) -> bytes:
    """Send a request over a plain socket to 127.0.0.1; the first answer's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        for chunk in body:
            writer.write(chunk)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"}}"), timeout=10)
    finally:
        writer.close()


async def test_limits_over_loopback() -> None:
    """Served by uvicorn: a declared 50 MiB body is refused before a byte of it is sent,
    and a chunked one (which declares nothing) once it passes the limit."""
    async with running_relay(api_keys=[KEY], max_body_bytes=LIMIT) as relay:
        head = (
            f"POST {GA} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\n"
        )
        answer = await raw_exchange(relay.port, head + f"Content-Length: {50 << 20}\r\n\r\n", [])
        assert answer.startswith(b"HTTP/1.1 413 ") and b'"request_too_large"' in answer
        chunks = [b"400\r\n" + b" " * 1024 + b"\r\n"] * 16
        answer = await raw_exchange(relay.port, head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
        assert answer.startswith(b"HTTP/1.1 413 ") and b'"request_too_large"' in answer
        async with relay.http() as http:  # and the relay goes on
            assert (await http.post(GA, headers=HEADERS, json={})).status_code == 200


# -- credentials and bugs ------------------------------------------------------------


async def test_models_need_an_api_key(http: httpx.AsyncClient) -> None:
    assert error_of(await http.get("/v1/models"), 401)["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer sk-wrong"}
    assert error_of(await http.get("/v1/models", headers=wrong), 401)["code"] == "invalid_api_key"
    ephemeral = (await http.post(GA, headers=HEADERS, json={})).json()["value"]
    as_ephemeral = {"Authorization": f"Bearer {ephemeral}"}
    assert error_of(await http.get("/v1/models", headers=as_ephemeral), 401)
    reply = await http.get("/v1/models", headers=HEADERS)
    assert reply.status_code == 200 and reply.json() == {"object": "list", "data": []}


async def test_a_bug_is_still_the_envelope() -> None:
    app = create_app(RelaySettings())

    @app.get("/test/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as http:
        error = error_of(await http.get("/test/bug"), 500)
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "a bug" not in error["message"]
