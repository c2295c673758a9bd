"""The relay app served in this process (uvicorn on 127.0.0.1, a free port) in front of fake
transceivers: small ``websockets`` servers on 127.0.0.1 that answer ``GET /load`` and
``GET /v1/models``, record the ``session.open`` spec of every ``/v1/sessions`` connection,
and echo the frames that follow. Nothing here sends to any other address."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from relay.app import create_app
from relay.edge import Edge
from relay.settings import RelaySettings
from tests.waiting import eventually
from transceiver.protocol.contract import SessionSpec

HOST = "127.0.0.1"


class FakeTransceiver:
    """One fake transceiver. ``refusing`` answers sessions with 503, as a full or draining
    transceiver does; a frame ``{"type": "test.close", "code": N}`` makes it close that
    session with ``N``; :meth:`kill` drops every connection without a close frame."""

    def __init__(self, refusing: bool = False) -> None:
        self.refusing = refusing
        self.specs: list[SessionSpec] = []
        self.connections: set[ServerConnection] = set()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._session, HOST, 0, process_request=self._http, ping_interval=None
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def kill(self) -> None:
        """The transceiver dies: its connections drop, no close frame is sent."""
        for connection in list(self.connections):
            connection.transport.abort()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/load":
            load = {"sessions": len(self.connections), "max_sessions": None, "cpu": 0.0}
            return connection.respond(HTTPStatus.OK, json.dumps(load))
        if request.path == "/v1/models":
            return connection.respond(HTTPStatus.OK, json.dumps({"models": ["gpt-realtime"]}))
        if request.path != "/v1/sessions":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "full\n")
        return None

    async def _session(self, connection: ServerConnection) -> None:
        spec = SessionSpec.decode(await connection.recv())
        self.specs.append(spec)
        self.connections.add(connection)
        try:
            created = {"type": "session.created", "conn": spec.conn, "model": spec.model}
            await connection.send(json.dumps(created))
            async for frame in connection:
                event = json.loads(frame)
                if event.get("type") == "test.close":
                    await connection.close(int(event["code"]), "closed by the test")
                    return
                await connection.send(frame)
        finally:
            self.connections.discard(connection)


@contextlib.asynccontextmanager
async def fake_transceiver(refusing: bool = False) -> AsyncIterator[FakeTransceiver]:
    fake = FakeTransceiver(refusing)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@dataclass
class RunningRelay:
    edge: Edge
    port: int

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/realtime"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the relay's metrics (``realtime_relay_`` + ``name``); 0 if unset."""
        value = self.edge.metrics.registry.get_sample_value(f"realtime_relay_{name}", labels)
        return value or 0.0

    async def idle(self) -> None:
        """Wait until the relay holds no session (releases run after the client left)."""
        await eventually(lambda: len(self.edge.live) == 0 and not self._placed(), what="idle")

    def _placed(self) -> int:
        return sum(member.sessions for member in self.edge.pool.members)


@contextlib.asynccontextmanager
async def running_relay(
    transceivers: list[FakeTransceiver] | None = None, **settings: Any
) -> AsyncIterator[RunningRelay]:
    """The relay app on 127.0.0.1, served by uvicorn as ``relay.cli`` serves it."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((HOST, 0))
    port = int(sock.getsockname()[1])
    config_settings = RelaySettings(
        host=HOST,
        port=port,
        transceiver=[t.url for t in transceivers or []],
        peer_url=f"http://{HOST}:{port}",
        **settings,
    )
    app = create_app(config_settings)
    edge: Edge = app.state.edge
    config = uvicorn.Config(
        app,
        ws="websockets-sansio",
        ws_ping_interval=None,
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="the relay started")
        assert not task.done(), "the relay did not start"
        yield RunningRelay(edge, port)
    finally:
        server.should_exit = True
        await task
        await edge.pool.stop()
        sock.close()
