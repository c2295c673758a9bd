"""The relay's connection protocols (relay/server.py) under uvicorn on 127.0.0.1, serving small
ASGI apps, with raw socket clients: the header size bound, pipelined requests answered in
order, the stall bound with a client that reads slowly but steadily, every refusal in the
OpenAI error envelope, and pings while the server is not reading the client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect

from relay.server import server_config
from relay.settings import RelaySettings
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOST = "127.0.0.1"
STREAM_RATE = 120_000  # bytes/s the streaming app writes
READ_RATE = 100_000  # bytes/s the slow client reads
STREAM_S = 3.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/slow`` answers after 0.6 s, ``/stream`` writes STREAM_RATE for STREAM_S; WebSocket
    ``/boom`` fails before its handshake, ``/busy`` stops reading a while; anything else
    reads its body and answers it."""
    path = scope["path"]
    if scope["type"] == "websocket":
        if path == "/boom":
            raise RuntimeError("a bug before the handshake")
        await receive()
        await send({"type": "websocket.accept"})
        if path == "/busy":  # takes a message, then reads nothing for a while
            await receive()
            await asyncio.sleep(1.5)  # the app's own latency
            await send({"type": "websocket.send", "text": "still here"})
            await receive()
        return
    if path == "/stream":
        await _stream(send)
        return
    if path == "/slow":
        await asyncio.sleep(0.6)  # the app's own latency
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = path.encode() + b":" + body
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def _stream(send: Any) -> None:
    total = int(STREAM_RATE * STREAM_S)
    headers = [(b"content-length", str(total).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    while sent < total:
        await asyncio.sleep(0.01)  # the app's own pace
        due = min(total, int((loop.time() - started) * STREAM_RATE))
        await send({"type": "http.response.body", "body": b"x" * (due - sent), "more_body": True})
        sent = due
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serving(sndbuf: int | None = None, **settings: Any) -> AsyncIterator[int]:
    """``app`` served as the relay serves its own (relay.server.server_config); its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if sndbuf is not None:  # accepted sockets inherit it (Linux)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind((HOST, 0))
    port = int(sock.getsockname()[1])
    relay_settings = RelaySettings(host=HOST, port=port, **settings)
    server = uvicorn.Server(server_config(app, relay_settings, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="the server started")
        assert not task.done(), "the server did not start"
        yield port
    finally:
        server.should_exit = server.force_exit = True
        await task
        sock.close()


async def exchange(port: int, request: bytes, timeout_s: float = 10) -> bytes:
    """Send ``request``, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read()
    finally:
        writer.close()


def envelope(response: bytes, status: int) -> dict[str, Any]:
    """The error of a single JSON error response with ``status``."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), response[:300]
    assert b"content-type: application/json" in head.lower(), head
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


async def test_oversized_headers_get_431_and_are_not_read_on() -> None:
    """Headers past --client-max-header-bytes get 431 in the envelope; a client pushing one
    endless header is cut off at once, not read until the header deadline."""
    async with serving(client_max_header_bytes=4096, client_header_timeout_s=10) as port:
        head = b"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 8192 + b"\r\n\r\n"
        error = envelope(await exchange(port, head), 431)
        assert error["code"] == "request_headers_too_large"
        # Just under the bound is served.
        fits = b"GET /x HTTP/1.1\r\nHost: h\r\nX-Fit: " + b"f" * 3000 + b"\r\n\r\n"
        assert (await exchange(port, fits)).startswith(b"HTTP/1.1 200 ")
        # Behind a request still being answered: its answer, then the close (a 431 would be
        # read as the first request's answer).
        both = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nX: " + b"c" * 5000
        received = await exchange(port, both + b"\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 200 "), received[:300]
        assert received.endswith(b"/slow:"), received[-300:]

        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: ")
        pushed = 0
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(8):  # well inside the 10 s header deadline
                while pushed < 256 * 1024 * 1024:
                    writer.write(b"b" * (1 << 20))
                    await writer.drain()
                    pushed += 1 << 20
        writer.close()
        assert pushed < 64 * 1024 * 1024, f"{pushed >> 20} MiB of one header read"


async def test_pipelined_requests_are_answered_in_order() -> None:
    """A slow request pipelined before one whose body never comes (or whose headers never
    end): the slow one's response comes first and whole; the body deadline starts when the
    second is served, and a request that fails while a response is owed gets none of its
    own (it would be read as the earlier one's)."""
    async with serving(client_body_timeout_s=0.3, client_header_timeout_s=0.3) as port:
        slow = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
        post = b"POST /post HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"
        received = await exchange(port, slow + post)
        first, _, rest = received.partition(b"/slow:")
        assert first.startswith(b"HTTP/1.1 200 "), received[:300]
        error = envelope(rest, 408)
        assert error["code"] == "request_timeout"
        # Headers that never end behind the slow request: its answer, then the close.
        received = await exchange(port, slow + b"GET /next HTTP/1.1\r\nHo")
        assert received.startswith(b"HTTP/1.1 200 "), received[:300]
        assert received.endswith(b"/slow:"), received[-300:]


async def test_a_client_reading_slowly_but_steadily_is_not_dropped() -> None:
    """A client that reads steadily, more slowly than it is written to, so the write buffer
    creeps up but stays under its high-water mark, is not taken for a stalled one."""
    async with serving(sndbuf=4096, client_stall_timeout_s=1.0) as port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        received, body, started = b"", b"", loop.time()
        expected = int(STREAM_RATE * STREAM_S)
        try:
            async with asyncio.timeout(STREAM_S * 3):
                while len(body) < expected:
                    await asyncio.sleep(0.01)  # the client's own pace
                    due = int((loop.time() - started) * READ_RATE) - len(received)
                    if due <= 0:
                        continue
                    try:
                        chunk = sock.recv(due)
                    except BlockingIOError:
                        continue
                    except ConnectionError:
                        break
                    if not chunk:
                        break
                    received += chunk
                    body = received.partition(b"\r\n\r\n")[2]
        finally:
            sock.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), received[:300]
        assert len(body) == expected, f"dropped after {len(body)} of {expected} bytes"


async def test_refusals_are_in_the_error_envelope() -> None:
    """A malformed request, a bad or oversized WebSocket handshake and a failure before the
    handshake are answered in the OpenAI error envelope, never in plain text."""
    async with serving() as port:
        bad_length = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: \xb2\r\n\r\n"
        assert envelope(await exchange(port, bad_length), 400)["code"] == "bad_request"
        bad_line = b"GET / HTTP/1.1 extra\r\n\r\n"
        assert envelope(await exchange(port, bad_line), 400)["code"] == "bad_request"
        key = base64.b64encode(os.urandom(16)).decode()

        def upgrade(path: str, key: str, extra: str = "") -> bytes:
            return (
                f"GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()

        error = envelope(await exchange(port, upgrade("/ws", "short")), 400)
        assert "Sec-WebSocket-Key" in error["message"], error
        # Past the relay's header bound (64 KiB), to which websockets' line limit (8 KiB
        # of its own) is raised: an ephemeral key may be longer than 8 KiB.
        long_line = f"X-Long: {'l' * 70_000}\r\n"
        error = envelope(await exchange(port, upgrade("/ws", key, long_line)), 431)
        assert error["code"] == "request_headers_too_large"
        error = envelope(await exchange(port, upgrade("/boom", key)), 500)
        assert error["type"] == "server_error"
        # And a good handshake still succeeds.
        ok = await exchange(port, upgrade("/ws", key), timeout_s=5)
        assert ok.startswith(b"HTTP/1.1 101 "), ok[:300]


async def test_a_client_is_not_failed_for_a_pong_the_server_has_not_read() -> None:
    """While the app has not taken a client's message, uvicorn reads nothing more from the
    client, its pongs included: that is no ping timeout (1011) for a live client."""
    async with serving(client_ping_interval_s=0.3, client_ping_timeout_s=0.3) as port:
        async with connect(f"ws://{HOST}:{port}/busy", ping_interval=None) as ws:
            await ws.send("one")
            await ws.send("two")  # left unread while the app is busy
            async with asyncio.timeout(10):
                assert await ws.recv() == "still here"
