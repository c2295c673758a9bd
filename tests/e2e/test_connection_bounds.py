"""Nothing a client opens is held forever, and no credential reaches the log.

Each test runs ``serve --backend mock`` on loopback with short bounds (relay/server.py,
relay/settings.py) and checks, from outside, that the relay lets go: a client that stops
reading, one that stops answering pings, connections that never finish their request
(slowloris), connect/disconnect churn, and the connection limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import MOCK_ARGS
from tests.e2e.link import LINK_ENV, LINK_HEADERS, transceiver_urls
from tests.servers import RunningServer, relay_server
from tests.waiting import eventually
from transceiver.observability import redact

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOST = "127.0.0.1"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def sessions_url(server: RunningServer) -> str:
    return f"{server.ws_base_url}/realtime?model=gpt-realtime"


async def active_sessions(http: httpx.AsyncClient, server: RunningServer) -> float:
    text = (await http.get(f"{server.base_url.removesuffix('/v1')}/metrics")).text
    for line in text.splitlines():
        if line.startswith('realtime_relay_active_sessions{transport="ws"}'):
            return float(line.split()[-1])
    return 0.0


async def text_turn(ws: ClientConnection, text: str = "hello") -> dict[str, Any]:
    """One user message and its text response; the ``response.done`` event."""
    session = {"type": "realtime", "output_modalities": ["text"]}
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    content = [{"type": "input_text", "text": text}]
    item = {"type": "message", "role": "user", "content": content}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))
    async with asyncio.timeout(15):
        while True:
            event = json.loads(await ws.recv())
            assert event["type"] != "error", event
            if event["type"] == "response.done":
                return dict(event)


async def test_credentials_never_reach_the_log() -> None:
    """Keys in a query string, a header or a subprotocol are refused and never logged, in
    uvicorn's access lines or the relay's own."""
    good = "sk-good-key-a1b2c3"
    secrets = ["sk-query-secret-1", "hunter2-query", "sk-wrong-bearer-3", "sk-proto-secret-4"]
    for fmt in ("text", "json"):
        args = (*MOCK_ARGS, "--api-keys", good, "--log-format", fmt)
        with relay_server(*args) as server:
            root = server.base_url.removesuffix("/v1")
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"{server.base_url}/models?api_key={secrets[0]}")
                assert r.status_code == 401
                with pytest.raises(InvalidStatus) as refused:
                    await connect(f"{sessions_url(server)}&api_key={secrets[0]}")
                assert refused.value.response.status_code == 401
                headers = {"Authorization": f"Bearer {secrets[2]}"}
                with pytest.raises(InvalidStatus):
                    await connect(sessions_url(server), additional_headers=headers)
                protocols: Any = ["realtime", f"openai-insecure-api-key.{secrets[3]}"]
                with pytest.raises(InvalidStatus):
                    await connect(sessions_url(server), subprotocols=protocols)
                # Accepted with the good key: the extra ?token= is logged redacted too.
                headers = {"Authorization": f"Bearer {good}"}
                url = f"{sessions_url(server)}&token={secrets[1]}"
                async with connect(url, additional_headers=headers) as ws:
                    assert json.loads(await ws.recv())["type"] == "session.created"
                marker = (await http.get(f"{root}/healthz?key={secrets[1]}")).status_code
                assert marker == 200

            def logged() -> bool:
                return any("/healthz?key=" in line for line in server.lines)

            await eventually(logged, what="the access line of the last request")
            log = "\n".join(server.lines)
            for secret in [good, *secrets]:
                assert secret not in log, f"{secret} logged ({fmt}):\n{log[-3000:]}"
            assert "/v1/models?api_key=[REDACTED]" in log, log[-3000:]


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (
            '"GET /v1/models?model=m&api_key=sk-a1 HTTP/1.1" 401',
            '"GET /v1/models?model=m&api_key=[REDACTED] HTTP/1.1" 401',
        ),
        ("authorization: Bearer abc.def", "authorization: Bearer [REDACTED]"),
        ('{"api-key": "zzz", "x": 1}', '{"api-key": "[REDACTED]", "x": 1}'),
        ("openai-insecure-api-key.k1, realtime", "openai-insecure-api-key.[REDACTED], realtime"),
        ("wss://user:pw@host/v1?token=t#f", "wss://[REDACTED]@host/v1?token=[REDACTED]#f"),
        ("minted ek_abc.def-_ for conn_1", "minted [REDACTED] for conn_1"),
        # Ordinary lines stay as they are.
        ("session.closed conn=conn_1 tokens=5 max_tokens=20", None),
        ("llm_first_token task-1 desk-top monkey=banana a basic test", None),
    ],
)
async def test_redact(line: str, logged: str | None) -> None:
    assert redact(line) == (logged or line)


async def test_a_client_that_stops_reading_is_dropped() -> None:
    """A client that reads nothing while the session has output for it is dropped after
    the stall bound, and its session ends; a bystander session goes on."""
    stall_s = 2.0
    args = (*MOCK_ARGS, "--client-stall-timeout-s", str(stall_s), "--client-ping-interval-s", "0")
    with relay_server(*args, env=LINK_ENV) as server:
        async with (
            httpx.AsyncClient(timeout=5) as http,
            connect(sessions_url(server)) as bystander,
        ):
            assert (await text_turn(bystander))["response"]["status"] == "completed"
            # max_queue=1: the library reads one frame ahead, then leaves the socket unread.
            stalled = await connect(sessions_url(server), max_size=None, max_queue=1)
            noise = random.Random(0).randbytes(2 * 24_000 * 10)  # incompressible audio
            audio = base64.b64encode(noise).decode()
            content = [{"type": "input_audio", "audio": audio}]
            item = {"id": "item_big", "type": "message", "role": "user", "content": content}
            await stalled.send(json.dumps({"type": "conversation.item.create", "item": item}))
            for n in range(60):  # ~40 MB of answers, far past what the sockets buffer
                retrieve = {"type": "conversation.item.retrieve", "item_id": "item_big"}
                await stalled.send(json.dumps({**retrieve, "event_id": f"r{n}"}))
            started = asyncio.get_running_loop().time()

            def dropped() -> bool:
                return any("read nothing for" in line for line in server.lines)

            await eventually(dropped, timeout_s=stall_s * 4, what="the stalled client dropped")
            waited = asyncio.get_running_loop().time() - started
            assert waited < stall_s * 3, f"dropped after {waited:.1f} s"

            (member,) = await transceiver_urls(server)

            async def one_session() -> bool:
                relay = await active_sessions(http, server)
                load = await http.get(f"{member}/load", headers=LINK_HEADERS)
                transceiver = load.json()["sessions"]
                return relay == 1 and transceiver == 1

            # At once on the transceiver too (not after a 10 s closing timeout).
            await eventually(one_session, timeout_s=8, what="the stalled session ended")
            assert (await text_turn(bystander))["response"]["status"] == "completed"
            # Reading again, the client finds its connection gone once the buffers run out.
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(15):
                    while True:
                        await stalled.recv()
            await stalled.close()


async def test_a_client_that_stops_answering_pings_is_closed() -> None:
    """A raw WebSocket client that reads but never answers a ping is closed with 1011."""
    args = (*MOCK_ARGS, "--client-ping-interval-s", "0.5", "--client-ping-timeout-s", "0.5")
    with relay_server(*args) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n"
                f"Host: {HOST}:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        received = b""
        async with asyncio.timeout(10):  # the server closes it: EOF
            while chunk := await reader.read(65536):
                received += chunk
        writer.close()
        assert received.startswith(b"HTTP/1.1 101"), received[:200]
        assert b"session.created" in received
        assert b"\x89" in received, "no ping was sent"  # FIN + ping opcode
        assert b"\x88" in received and b"keepalive ping timeout" in received  # close frame
        assert b"\x03\xf3" in received  # its code, 1011


@contextlib.asynccontextmanager
async def raw_connections(
    port: int, count: int
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` TCP connections to the relay, closed on exit (the client keeps them open
    until then: only the server can have closed them)."""
    pairs = [await asyncio.open_connection(HOST, port) for _ in range(count)]
    try:
        yield pairs
    finally:
        for _, writer in pairs:
            writer.close()


async def test_slowloris_connections_are_closed_and_fds_return() -> None:
    """Connections that send nothing, headers byte by byte, or half a body are answered 408
    and closed within their deadlines; the relay's open files return to their baseline."""
    header_s, body_s = 1.0, 1.5
    args = (
        *MOCK_ARGS,
        "--client-header-timeout-s",
        str(header_s),
        "--client-body-timeout-s",
        str(body_s),
    )
    with relay_server(*args) as server:
        pid = server.process.pid
        baseline = open_fds(pid)
        silent, dribbling, half_body = 10, 10, 5
        request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode()
        post = (
            f"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: {HOST}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        ).encode()
        async with raw_connections(server.port, silent + dribbling + half_body) as pairs:
            readers = [reader for reader, _ in pairs]
            writers = [writer for _, writer in pairs]
            for writer in writers[silent + dribbling :]:
                writer.write(post)
            started = asyncio.get_running_loop().time()

            async def dribble() -> None:  # one byte per 0.1 s, forever (cancelled below)
                for n in range(10_000):
                    for writer in writers[silent : silent + dribbling]:
                        if not writer.is_closing():
                            writer.write(request[n : n + 1] if n < len(request) else b"x")
                    await asyncio.sleep(0.1)  # the slowloris's own pace, not a wait

            dribbler = asyncio.create_task(dribble())
            try:
                async with asyncio.timeout(header_s + body_s + 8):
                    answers = [await reader.read() for reader in readers]
            finally:
                dribbler.cancel()
            waited = asyncio.get_running_loop().time() - started
            assert waited < max(header_s, body_s) + 3, f"closed after {waited:.1f} s"
            for answer in answers:
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
                assert body["error"]["code"] == "request_timeout"
            await eventually(lambda: open_fds(pid) <= baseline, what="fds back to baseline")
        async with httpx.AsyncClient(timeout=5) as http:  # and the relay still serves
            assert (await http.get(f"{server.base_url}/models")).status_code == 200


async def test_connection_churn_leaves_no_residue() -> None:
    """300 connect/disconnect cycles (sessions closed cleanly or dropped, handshakes cut off,
    bare connections): the relay's open files and memory come back near their baseline."""
    cycles = 300
    with relay_server(*MOCK_ARGS) as server:
        pid = server.process.pid
        upgrade = (
            f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: {HOST}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        ).encode()

        async def cycle(n: int) -> None:
            kind = n % 4
            if kind == 0:  # a session, closed cleanly
                async with connect(sessions_url(server)) as ws:
                    assert json.loads(await ws.recv())["type"] == "session.created"
            elif kind == 1:  # a session, dropped without a closing handshake
                ws = await connect(sessions_url(server))
                assert json.loads(await ws.recv())["type"] == "session.created"
                ws.transport.abort()
            elif kind == 2:  # a handshake cut off halfway
                _, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(upgrade)
                await writer.drain()
                writer.close()
            else:  # connected, then gone: a reset
                sock = socket.create_connection((HOST, server.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

        async with httpx.AsyncClient(timeout=5) as http:
            for n in range(20):  # warm up: first sessions allocate for good
                await cycle(n)

            async def idle() -> bool:
                return await active_sessions(http, server) == 0

            await eventually(idle, what="warm-up sessions ended")
            fds, rss = open_fds(pid), rss_bytes(pid)
            for n in range(cycles):
                await cycle(n)
            await eventually(idle, what="every session ended")
            await eventually(lambda: open_fds(pid) <= fds, what=f"fds back to {fds}")
            grown = rss_bytes(pid) - rss
            assert grown < 24 * 1024 * 1024, f"the relay grew by {grown >> 20} MiB"


async def test_connections_past_the_limit_get_503() -> None:
    """Past --max-client-connections, a request and a WebSocket handshake get 503 in the
    error envelope; once a connection closes, both are served again."""
    with relay_server(*MOCK_ARGS, "--max-client-connections", "3") as server:
        root = server.base_url.removesuffix("/v1")
        async with raw_connections(server.port, 3) as _idle:
            async with httpx.AsyncClient(timeout=5) as http:

                async def full() -> httpx.Response | None:
                    r = await http.get(f"{root}/healthz")
                    return r if r.status_code == 503 else None

                refused = await eventually(full, what="a 503 past the limit")
                assert refused.json()["error"]["code"] == "too_many_connections"
                assert refused.headers["retry-after"] == "1"
            with pytest.raises(InvalidStatus) as handshake:
                await connect(sessions_url(server))
            assert handshake.value.response.status_code == 503
            body = json.loads(bytes(handshake.value.response.body or b"{}"))
            assert body["error"]["code"] == "too_many_connections"
        # The idle ones closed: both are served again.
        async with httpx.AsyncClient(timeout=5) as http:

            async def served() -> bool:
                return (await http.get(f"{root}/healthz")).status_code == 200

            await eventually(served, what="served below the limit")
        async with connect(sessions_url(server)) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_oversized_and_malformed_requests_get_the_envelope() -> None:
    """Headers past --client-max-header-bytes get 431, a malformed request or WebSocket
    handshake 400, all in the error envelope; the relay serves on."""
    with relay_server(*MOCK_ARGS, "--client-max-header-bytes", "4096") as server:

        async def exchange(request: bytes) -> tuple[bytes, dict[str, Any]]:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(request)
            async with asyncio.timeout(10):
                answer = await reader.read()
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in head.lower(), answer[:300]
            return head, json.loads(body)["error"]

        big = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'b' * 8192}\r\n\r\n"
        head, error = await exchange(big.encode())
        assert head.startswith(b"HTTP/1.1 431 ") and error["code"] == "request_headers_too_large"
        bad_length = b"POST /v1/realtime/client_secrets HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"
        head, error = await exchange(bad_length)
        assert head.startswith(b"HTTP/1.1 400 ") and error["code"] == "bad_request"
        bad_key = (
            f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: {HOST}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head, error = await exchange(bad_key.encode())
        assert head.startswith(b"HTTP/1.1 400 ") and "Sec-WebSocket-Key" in error["message"]
        async with connect(sessions_url(server)) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
