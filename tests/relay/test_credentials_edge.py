"""Credentials that are not what they seem: non-ASCII bytes in keys and call ids get a 401
or a 404 in the error envelope, never a 500; API keys are compared without leaking which
matched."""

from __future__ import annotations

import asyncio
import json

import pytest

from relay.auth import key_allowed
from tests.relay.inprocess import HOST, fake_transceiver, running_relay

KEY = "sk-edge"


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    """Send ``request`` as is (headers may hold any latin-1 byte); the status and JSON body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return status, json.loads(body)
    finally:
        writer.close()


def envelope_code(body: dict[str, object]) -> object:
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    return error["code"]


@pytest.mark.asyncio(loop_scope="session")
async def test_non_ascii_keys_and_call_ids_are_refused_not_500() -> None:
    async with fake_transceiver() as fake, running_relay([fake], api_keys=[KEY]) as relay:
        upgrade = (
            b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
        cases = [
            (
                b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer ek_abc.\xe9\r\nContent-Length: 0\r\n\r\n",
                401,
            ),
            (
                b"GET /v1/realtime HTTP/1.1\r\n"
                + upgrade
                + b"Authorization: Bearer ek_abc.\xe9\r\n\r\n",
                401,
            ),
            (
                b"GET /v1/realtime HTTP/1.1\r\n"
                + upgrade
                + b"Authorization: Bearer sk-\xe9\r\n\r\n",
                401,
            ),
            (
                b"GET /v1/realtime?call_id=rtc_a.b.%C3%A9 HTTP/1.1\r\n"
                + upgrade
                + f"Authorization: Bearer {KEY}\r\n\r\n".encode(),
                404,
            ),
            (
                b"POST /v1/realtime/calls/rtc_a.b.%C3%A9/hangup HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: 0\r\n\r\n".encode(),
                404,
            ),
        ]
        for request, status in cases:
            got, body = await raw_request(relay.port, request)
            assert got == status, (request, got, body)
            assert envelope_code(body) in ("invalid_api_key", "call_not_found")


def test_key_allowed_checks_every_key() -> None:
    assert key_allowed(None, [])
    assert key_allowed("sk-b", ["sk-a", "sk-b"])
    assert not key_allowed("sk-b\xe9", ["sk-a", "sk-b"])
    assert not key_allowed("sk", ["sk-a"])
    assert not key_allowed(None, ["sk-a"])
