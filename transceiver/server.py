"""The transceiver's network face: a relay's link, sessions, health and load.

``ws://HOST:PORT/v1/link`` is a relay's link: all its sessions on one connection
(transceiver/link.py), each opened with its ``session.open`` spec and refused (503) when
this transceiver is full or draining. ``ws://HOST:PORT/v1/sessions`` opens one session on a
WebSocket of its own (``--transceiver-link websocket``, or an older relay): the relay's first
frame is its spec (``transceiver/protocol/contract.py``); every later frame is a Realtime
JSON event, in both directions. ``GET /load`` (which says ``"link": 1``), ``/metrics`` and
``/v1/models`` answer plain HTTP.

Every request but ``GET /healthz`` must carry the link secret (``--link-secret``, the
relay's too) as ``Authorization: Bearer``, or gets 401: the port gives sessions that no
API key guards. ``/healthz`` stays open for container health checks and says only
``{"status": "ok"}`` (or ``"draining"``, with 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.http11 import Request, Response
from websockets.protocol import State

from transceiver import unix
from transceiver.backends.base import Backend
from transceiver.faults import Faults
from transceiver.lag import LoopLagMonitor
from transceiver.link import (
    LINK_PATH,
    Link,
    LinkServerConnection,
    LinkSession,
    carrier_max_size,
    is_link_path,
)
from transceiver.observability import CONTENT_TYPE, Metrics, log_event
from transceiver.prompts import PromptLibrary
from transceiver.protocol.contract import SessionSpec, SpecError
from transceiver.protocol.errors import ClientError, server_error_event
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.session import RealtimeSession
from transceiver.protocol.wire import encode_server_event
from transceiver.proxy import ProxyBackend, ProxySession
from transceiver.runner import SessionRunner
from transceiver.settings import TransceiverSettings
from transceiver.turns import TurnModel

log = logging.getLogger(__name__)

# A session: its own WebSocket (/v1/sessions), or one on a relay's link (/v1/link).
Session = ServerConnection | LinkSession

# How long a new connection may take to send its session.open frame.
OPEN_TIMEOUT_S = 10.0
# How long drain waits for one session's shutdown error and close before it drops the link.
DRAIN_CLOSE_TIMEOUT_S = 5.0


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _http_response(status: http.HTTPStatus, content_type: str, data: bytes) -> Response:
    """A plain HTTP answer. websockets closes the connection after any answer but a
    WebSocket upgrade, so it says so (RFC 9112, section 9.6): a client that keeps
    connections alive would otherwise send its next request on a closed one."""
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def _json_response(
    status: http.HTTPStatus, body: dict[str, Any], extra: list[tuple[str, str]] | None = None
) -> Response:
    response = _http_response(status, "application/json", json.dumps(body).encode())
    for name, value in extra or []:
        response.headers[name] = value
    return response


def _error_response(
    status: http.HTTPStatus,
    message: str,
    code: str,
    type: str = "invalid_request_error",
    extra: list[tuple[str, str]] | None = None,
) -> Response:
    """OpenAI's error envelope (relay/errors.py writes the same for the relay)."""
    error = {"message": message, "type": type, "param": None, "code": code}
    return _json_response(status, {"error": error}, extra)


class CpuMeter:
    """This process's CPU use (1.0 = one core) since the previous reading."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())
        self._value = 0.0

    def read(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        if wall < 0.5:  # too short to mean anything: keep the previous window
            return round(self._value, 3)
        self._last, self._value = now, cpu / wall
        return round(self._value, 3)


class TransceiverServer:
    def __init__(
        self,
        settings: TransceiverSettings,
        backend: Backend | ProxyBackend,
        turn_model: TurnModel | None = None,
        prompts: PromptLibrary | None = None,
    ) -> None:
        """``turn_model``: semantic_vad's end-of-turn model, shared by every session;
        ``prompts``: the prompt library sessions' ``prompt`` names."""
        self.settings = settings
        self.backend = backend
        self.turn_model = turn_model
        self.prompts = prompts  # --prompts, loaded by run_transceiver
        self.sessions = 0
        self.draining = False
        self.lag = LoopLagMonitor()
        self.socket_file: os.stat_result | None = None  # the --link-socket this one bound
        self.cpu = CpuMeter()
        self.metrics = Metrics("realtime_transceiver")
        self.ids = IdFactory()
        self._connections: set[Session] = set()
        # Admitted by _process_request (or a link's OPEN), not started yet: they count
        # against max_sessions, so a burst of opens cannot overfill the transceiver.
        self._admitting: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.faults = Faults(
            error_after=settings.mock_fault_error_after,
            close_after=settings.mock_fault_close_after,
            stall_after=settings.mock_fault_stall_after,
        )

    def load(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "max_sessions": self.settings.max_sessions,
            "draining": self.draining,
            "cpu": self.cpu.read(),
            "cpu_count": os.cpu_count(),
            "backend": self.backend.name,
            "pid": os.getpid(),
            "loop_lag": self.lag.stats(),
            "link": 1,  # sessions may come over /v1/link (transceiver/link.py)
            # ... also on this Unix socket, for a relay on this machine (transceiver/unix.py)
            "link_socket": self.settings.link_socket,
        }

    def _authorized(self, request: Request) -> bool:
        """The request carries the link secret (compared in constant time), or none is
        configured (``--insecure-no-link-secret``)."""
        secret = self.settings.link_secret
        if not secret:
            return True
        given = request.headers.get_all("Authorization")
        if len(given) != 1:
            return False
        scheme, _, presented = given[0].partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            _digest(presented.strip()), _digest(secret)
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":  # open, for container health checks: the status only
            if self.draining:
                return _json_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "draining"})
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if not self._authorized(request):
            return _error_response(
                http.HTTPStatus.UNAUTHORIZED,
                "This transceiver accepts only its relay: send the link secret "
                "(RELAY_LINK_SECRET) as 'Authorization: Bearer'.",
                "invalid_link_secret",
                extra=[("WWW-Authenticate", "Bearer")],
            )
        return self._route(connection, request, path)

    def _route(self, connection: ServerConnection, request: Request, path: str) -> Response | None:
        if path == "/load":
            return _json_response(http.HTTPStatus.OK, self.load())
        if path == "/metrics":
            return _http_response(http.HTTPStatus.OK, CONTENT_TYPE, self.metrics.render())
        if path == "/v1/models":
            return _json_response(http.HTTPStatus.OK, {"models": self.backend.model_ids()})
        if path not in (LINK_PATH, "/v1/sessions"):
            return _error_response(
                http.HTTPStatus.NOT_FOUND, f"No route {path}.", "not_found", "invalid_request_error"
            )
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return _error_response(
                http.HTTPStatus.UPGRADE_REQUIRED,
                f"{path} takes a WebSocket connection (the relay's).",
                "upgrade_required",
                extra=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
        if path == LINK_PATH:  # admission is per session, at each OPEN
            return None
        reason = self._refusal()
        if reason is not None:
            return _error_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"This transceiver is {reason}.",
                "session_limit_reached",
                "server_error",
            )
        self._admitting.add(connection)
        return None

    def _refusal(self) -> str | None:
        """Why a new session is refused now ("draining", "full"), or ``None``."""
        self._admitting = {c for c in self._admitting if c.state is not State.CLOSED}
        if self.draining or self.sessions + len(self._admitting) >= self.settings.max_sessions:
            return "draining" if self.draining else "full"
        return None

    def _link_open(self, session: LinkSession, spec: bytes) -> tuple[int, str] | None:
        """A link's OPEN: refused (503, as ``/v1/sessions`` answers), or started with
        ``spec`` as its first frame."""
        reason = self._refusal()
        if reason is not None:
            return http.HTTPStatus.SERVICE_UNAVAILABLE.value, reason
        try:
            session.preload(spec.decode())
        except UnicodeDecodeError:
            return http.HTTPStatus.BAD_REQUEST.value, "the session.open frame is not UTF-8"
        self._admitting.add(session)
        task = asyncio.create_task(self._handler(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _serve_link(self, connection: ServerConnection) -> None:
        await Link(connection, self.settings.max_frame_bytes, self._link_open).run()

    async def _send_counted(self, connection: Session, message: str) -> None:
        """Send a frame made by ``encode_server_event``, counting it (and errors by code)."""
        self.metrics.events_out.inc()
        if message.startswith('{"type":"error"'):
            self.metrics.error(json.loads(message).get("error", {}).get("code"))
        await connection.send(message)

    async def _counted(self, connection: Session) -> AsyncIterator[str | bytes]:
        async for frame in connection:
            self.metrics.events_in.inc()
            yield frame

    async def _handler(self, connection: Session) -> None:
        if isinstance(connection, ServerConnection) and connection.request is not None:
            if is_link_path(connection.request.path):
                await self._serve_link(connection)
                return
        self._admitting.discard(connection)
        self._connections.add(connection)
        self.sessions += 1
        try:
            spec = await self._open(connection)
            if spec is not None:
                await self._run(connection, spec)
        finally:
            self._connections.discard(connection)
            self.sessions -= 1

    async def _open(self, connection: Session) -> SessionSpec | None:
        """The session spec the relay sends first, or ``None`` (the connection is closed)."""
        try:
            frame = await asyncio.wait_for(connection.recv(), OPEN_TIMEOUT_S)
            return SessionSpec.decode(frame)
        except (TimeoutError, SpecError) as exc:
            log.warning("refused a session that did not open properly: %s", exc or "timeout")
            with contextlib.suppress(ConnectionClosed):
                await connection.close(1008, "expected a session.open frame")
        except ConnectionClosed:
            pass
        return None

    async def _run(self, connection: Session, spec: SessionSpec) -> None:
        transport = spec.transport.value
        self.metrics.sessions.labels(transport).inc()
        self.metrics.sessions_total.labels(transport).inc()
        started = time.monotonic()
        session_id: str | None = None
        items: int | None = None
        try:
            if isinstance(self.backend, ProxyBackend):
                proxy = ProxySession(
                    self.backend, connection, spec, metrics=self.metrics, turn_model=self.turn_model
                )
                session_id = proxy.id
                self._log_start(session_id, spec)
                await proxy.run()
                return
            session = await self._core_session(connection, spec)
            if session is None:
                return
            session_id = session.id
            self._log_start(session_id, spec)
            await self._run_local(connection, session)
            items = len(session.conversation)
        finally:
            self.metrics.sessions.labels(transport).dec()
            if session_id is not None:
                seconds = round(time.monotonic() - started, 1)
                log_event(log, "session.end", id=session_id, seconds=seconds, items=items)

    def _log_start(self, session_id: str, spec: SessionSpec) -> None:
        log_event(
            log,
            "session.start",
            id=session_id,
            conn=spec.conn,  # the relay's name for the client connection
            kind=spec.kind.value,
            model=spec.model,
            beta=spec.beta,
            transport=spec.transport.value,
            backend=self.backend.name,
        )

    async def _core_session(self, connection: Session, spec: SessionSpec) -> RealtimeSession | None:
        """The core session for ``spec``, or ``None`` when its configuration is refused."""
        try:
            return RealtimeSession(
                spec,
                created_at_s=time.time(),
                max_input_audio_ms=int(self.settings.max_input_audio_s * 1000),
                max_conversation_audio_ms=int(self.settings.max_conversation_audio_s * 1000),
                prompts=self.prompts,
            )
        except ClientError as exc:
            error = {"type": "error", "event_id": "event_0", "error": exc.to_error(None)}
            with contextlib.suppress(ConnectionClosed):
                await self._send_counted(connection, encode_server_event(error))
                await connection.close(1008, "invalid session configuration")
            return None

    async def _run_local(self, connection: Session, session: RealtimeSession) -> None:
        assert not isinstance(self.backend, ProxyBackend)

        async def close(code: int, reason: str) -> None:
            await connection.close(code, reason)

        async def send(message: str) -> None:
            await self._send_counted(connection, message)

        runner = SessionRunner(
            session,
            self.backend,
            self.faults.wrap(send, close, session.ids),
            close,
            metrics=self.metrics,
            turn_model=self.turn_model,
        )
        if isinstance(connection, LinkSession):  # frames taken as they arrive, when possible

            def take(payload: bytes, text: bool) -> bool:
                if not runner.take_now(payload.decode() if text else payload):
                    return False
                self.metrics.events_in.inc()
                return True

            connection.take = take
        try:
            with contextlib.suppress(ConnectionClosed):
                await runner.run(self._counted(connection))
        finally:
            if isinstance(connection, LinkSession):
                connection.take = None

    async def drain(self, timeout_s: float) -> None:
        """Refuse new sessions; let running ones go on up to ``timeout_s``; close the rest."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        if self.sessions:
            log.info("draining: waiting up to %.0f s for %d session(s)", timeout_s, self.sessions)
        while self.sessions and time.monotonic() < deadline:  # noqa: ASYNC110 (a count, with a deadline)
            await asyncio.sleep(0.1)
        # All at once: a peer that does not answer its close costs its own close timeout,
        # not everyone's.
        await asyncio.gather(*(self._close_for_drain(c) for c in list(self._connections)))

    async def _close_for_drain(self, connection: Session) -> None:
        message = server_error_event(self.ids.event_id(), SHUTDOWN_MESSAGE, "server_shutting_down")
        try:
            # A peer that stopped reading cannot hold the shutdown: bounded, then dropped.
            async with asyncio.timeout(DRAIN_CLOSE_TIMEOUT_S):
                await self._send_counted(connection, encode_server_event(message))
                await connection.close(1012, "server restarting")
        except ConnectionClosed:
            pass
        except TimeoutError:
            if isinstance(connection, LinkSession):
                connection.abort()
            else:
                connection.transport.abort()

    async def start(self) -> list[Server]:
        """Listen on the port and, with ``--link-socket``, on that Unix socket too (the
        port's server first). ``unix.SocketPathError`` when the path cannot be used."""
        self.lag.start()
        servers = [await serve(self._handler, self.settings.host, self.settings.port, **self._ws)]
        path = self.settings.link_socket
        if path:
            listener, self.socket_file = unix.bind(path)
            servers.append(await unix_serve(self._handler, sock=listener, **self._ws))
        return servers

    @property
    def _ws(self) -> dict[str, Any]:
        """The WebSocket server's options, the same on the port and the socket."""
        return dict(
            process_request=self._process_request,
            logger=_HANDSHAKE_LOG,
            create_connection=LinkServerConnection,
            max_size=carrier_max_size(self.settings.max_frame_bytes),
            # Frames read ahead of a session that stopped reading (its outbox is full):
            # each may be max_frame_bytes, so few (the relay reads 4 ahead too).
            max_queue=4,
            compression=None,
            # A relay that vanishes without a FIN is noticed and its sessions end.
            ping_interval=20,
            ping_timeout=20,
        )


class _RefusedRequests(logging.Filter):
    """websockets logs a request it cannot take as a handshake (a POST, HTTP/1.0, a header
    past its bounds: it closes the connection without an answer) as an ERROR with its
    traceback; here one INFO line instead, and none at a higher level: anyone who reaches
    the port could fill the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "opening handshake failed" or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if not isinstance(exc, InvalidHandshake):  # a bug (process_request raised): as is
            return True
        record.msg, record.args = (
            "refused a request that is no WebSocket handshake: %s",
            (exc.__cause__ or exc if exc is not None else None,),
        )
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return log.isEnabledFor(logging.INFO)


_HANDSHAKE_LOG = logging.getLogger("transceiver.handshakes")
_HANDSHAKE_LOG.addFilter(_RefusedRequests())

SHUTDOWN_MESSAGE = "The server is restarting; reconnect to continue."
