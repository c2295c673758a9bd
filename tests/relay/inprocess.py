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
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay.app import create_app
from relay.edge import Edge
from relay.server import server_config
from relay.settings import RelaySettings
from tests.waiting import eventually
from transceiver.link import Link, LinkSession, carrier_max_size
from transceiver.protocol.contract import SessionSpec

HOST = "127.0.0.1"
MAX_LINK_FRAME = 32 * 1024 * 1024  # the relay's default max_frame_bytes


class FakeTransceiver:
    """One fake transceiver. ``refusing`` answers sessions with 503 (or ``REFUSED`` on the
    link), as a full or draining transceiver does; a frame ``{"type": "test.close", "code":
    N}`` makes it close that session with ``N``, ``{"type": "test.pause", "ms": N}`` makes
    it read nothing for N ms, ``test.burst`` sends many frames at once (:func:`burst`),
    other frames (JSON or not) are echoed; :meth:`kill` drops
    every connection without a close frame. With ``link`` (the default) it offers the relay
    <-> transceiver link (``/v1/link``, the real :class:`Link`), as a transceiver does, so
    the relay's sessions go over it; without, one WebSocket per session (``/v1/sessions``)."""

    def __init__(self, refusing: bool = False, link: bool = True) -> None:
        self.refusing = refusing
        self.link = link
        self.specs: list[SessionSpec] = []
        self.starting_slowly, self.go_on = asyncio.Event(), asyncio.Event()  # SLOW_INSTRUCTIONS
        self.connections: set[ServerConnection | LinkSession] = set()  # its sessions
        self.carriers: set[ServerConnection] = set()  # sessions' WebSockets and links
        self._tasks: set[asyncio.Task[None]] = set()
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
            self._session,
            HOST,
            0,
            process_request=self._http,
            ping_interval=None,
            max_size=carrier_max_size(MAX_LINK_FRAME),
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def kill(self) -> None:
        """The transceiver dies: its connections drop, no close frame is sent."""
        for connection in list(self.carriers):
            connection.transport.abort()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/load":
            load = {"sessions": len(self.connections), "max_sessions": None, "cpu": 0.0}
            if self.link:
                load["link"] = 1
            return connection.respond(HTTPStatus.OK, json.dumps(load))
        if request.path == "/v1/models":
            return connection.respond(HTTPStatus.OK, json.dumps({"models": ["gpt-realtime"]}))
        if request.path == "/v1/link" and self.link:
            return None
        if request.path != "/v1/sessions":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "full\n")
        return None

    async def _session(self, connection: ServerConnection) -> None:
        self.carriers.add(connection)
        try:
            if connection.request is not None and connection.request.path == "/v1/link":
                await Link(connection, MAX_LINK_FRAME, self._link_open).run()
            else:
                await self._echo(connection)
        finally:
            self.carriers.discard(connection)

    def _link_open(self, session: LinkSession, spec: bytes) -> tuple[int, str] | None:
        if self.refusing:
            return HTTPStatus.SERVICE_UNAVAILABLE.value, "full"
        session.preload(spec.decode())
        task = asyncio.create_task(self._echo(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _echo(self, connection: ServerConnection | LinkSession) -> None:
        self.connections.add(connection)
        try:
            await self._echo_frames(connection)
        except ConnectionClosed:
            pass  # the relay ended it
        finally:
            self.connections.discard(connection)

    async def _echo_frames(self, connection: ServerConnection | LinkSession) -> None:
        spec = SessionSpec.decode(await connection.recv())
        self.specs.append(spec)
        if (spec.overrides or {}).get("instructions") == REFUSED_INSTRUCTIONS:
            # As a transceiver refuses a session's configuration (transceiver/server.py).
            error = {
                "type": "error",
                "event_id": "event_0",
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_value",
                    "message": "These instructions are refused.",
                    "param": "session.instructions",
                    "event_id": None,
                },
            }
            await connection.send(json.dumps(error))
            await connection.close(1008, "invalid session configuration")
            return
        if (spec.overrides or {}).get("instructions") == SLOW_INSTRUCTIONS:
            self.starting_slowly.set()
            await self.go_on.wait()  # as an upstream (the proxy's) takes its time
        created = {"type": "session.created", "conn": spec.conn, "model": spec.model}
        await connection.send(json.dumps(created))
        async for frame in connection:
            try:
                event = json.loads(frame)
            except ValueError:  # not JSON (a binary frame, say): echoed as it is
                event = None
            if isinstance(event, dict) and event.get("type") == "test.close":
                await connection.close(int(event["code"]), "closed by the test")
                return
            if isinstance(event, dict) and event.get("type") == "test.pause":
                await asyncio.sleep(event["ms"] / 1000)  # reads nothing meanwhile
            if isinstance(event, dict) and event.get("type") == "test.burst":
                for frame in burst(event):
                    await connection.send(frame)
                continue
            await connection.send(frame)


# A session whose ``instructions`` are these is refused by the fake, as a transceiver
# refuses a configuration it cannot run (an error event, then 1008).
REFUSED_INSTRUCTIONS = "refuse this session"
# One whose instructions are these starts (sends session.created) once ``go_on`` is set.
SLOW_INSTRUCTIONS = "start this session when told"


def burst(event: dict[str, Any]) -> list[str]:
    """``{"type": "test.burst", "n": N, "pad": P, "done_at": I}``: N frames ``test.frame``
    numbered by ``seq`` (P bytes of padding each), sent at once; the one at I (if given) a
    ``response.done``."""
    frames = []
    for seq in range(int(event["n"])):
        kind = "response.done" if seq == event.get("done_at") else "test.frame"
        frames.append(json.dumps({"type": kind, "seq": seq, "pad": "x" * int(event.get("pad", 0))}))
    return frames


@contextlib.asynccontextmanager
async def fake_transceiver(
    refusing: bool = False, link: bool = True
) -> AsyncIterator[FakeTransceiver]:
    fake = FakeTransceiver(refusing, link)
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
    # The relay's own protocols (relay/server.py), as relay.cli serves it; no pings.
    config = server_config(app, config_settings, ws_ping_interval=None, log_level="warning")
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
