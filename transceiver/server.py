"""The transceiver's network face: one internal WebSocket per session, plus health and load.

``ws://HOST:PORT/v1/sessions?model=...&intent=transcription&beta=1`` opens a session;
frames are Realtime JSON events in both directions. ``GET /healthz`` and ``GET /load``
answer plain HTTP.
"""

from __future__ import annotations

import base64
import http
import json
import logging
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from transceiver.backends.base import Backend
from transceiver.lag import LoopLagMonitor
from transceiver.protocol.errors import ClientError
from transceiver.protocol.session import RealtimeSession, SessionKind
from transceiver.proxy import ProxyBackend, ProxySession
from transceiver.runner import Faults, SessionRunner
from transceiver.settings import TransceiverSettings

log = logging.getLogger(__name__)


def build_backend(settings: TransceiverSettings) -> Backend | ProxyBackend:
    if settings.backend == "openai":
        return ProxyBackend(settings)
    if settings.backend == "mock":
        from transceiver.backends.mock import MockBackend, MockOptions, MockScript

        script = MockScript.load(settings.mock_script) if settings.mock_script else None
        return MockBackend(
            MockOptions(
                script=script,
                first_delta_ms=settings.mock_first_delta_ms,
                words_per_minute=settings.mock_words_per_minute,
                realtime=settings.mock_realtime,
            )
        )
    from transceiver.backends.local import LocalBackend

    return LocalBackend.from_settings(settings)


def _json_response(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


class TransceiverServer:
    def __init__(self, settings: TransceiverSettings, backend: Backend | ProxyBackend) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = 0
        self.lag = LoopLagMonitor()
        self.faults = Faults(
            error_after=settings.mock_fault_error_after,
            close_after=settings.mock_fault_close_after,
            stall_after=settings.mock_fault_stall_after,
        )

    def load(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "max_sessions": self.settings.max_sessions,
            "backend": self.backend.name,
            "pid": os.getpid(),
            "loop_lag": self.lag.stats(),
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _json_response(http.HTTPStatus.OK, {"status": "ok", **self.load()})
        if path == "/load":
            return _json_response(http.HTTPStatus.OK, self.load())
        if path == "/v1/models":
            return _json_response(http.HTTPStatus.OK, {"models": self.backend.model_ids()})
        if path != "/v1/sessions":
            return _json_response(http.HTTPStatus.NOT_FOUND, {"error": "not found"})
        if self.sessions >= self.settings.max_sessions:
            return _json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                {
                    "error": {
                        "code": "session_limit_reached",
                        "message": "This transceiver is full.",
                    }
                },
            )
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        query = parse_qs(urlsplit(connection.request.path).query)

        def arg(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        kind = (
            SessionKind.TRANSCRIPTION if arg("intent") == "transcription" else SessionKind.REALTIME
        )
        overrides = None
        if arg("session"):
            overrides = json.loads(base64.urlsafe_b64decode(arg("session") or ""))
        if isinstance(self.backend, ProxyBackend):
            proxy = ProxySession(
                self.backend,
                connection,
                model=arg("model"),
                transcription=kind is SessionKind.TRANSCRIPTION,
                beta=arg("beta") == "1",
                media=arg("media") == "1",
                overrides=overrides,
            )
            self.sessions += 1
            log.info("session start proxy kind=%s model=%s", kind.value, arg("model"))
            try:
                await proxy.run()
            finally:
                self.sessions -= 1
                log.info("session end proxy")
            return
        try:
            session = RealtimeSession(
                kind=kind,
                model=arg("model"),
                beta=arg("beta") == "1",
                media=arg("media") == "1",
                session_overrides=overrides,
                created_at_s=time.time(),
            )
        except ClientError as exc:
            await connection.send(
                json.dumps({"type": "error", "event_id": "event_0", "error": exc.to_error(None)})
            )
            await connection.close(1008, "invalid session configuration")
            return

        async def close(code: int, reason: str) -> None:
            await connection.close(code, reason)

        runner = SessionRunner(session, self.backend, connection.send, close, faults=self.faults)
        self.sessions += 1
        log.info(
            "session start id=%s kind=%s model=%s beta=%s",
            session.id,
            kind.value,
            arg("model"),
            session.beta,
        )
        try:
            await runner.run(connection)
        except ConnectionClosed:
            pass
        finally:
            self.sessions -= 1
            log.info("session end id=%s", session.id)

    async def start(self) -> Server:
        self.lag.start()
        return await serve(
            self._handler,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            max_size=self.settings.max_frame_bytes,
            max_queue=256,
            compression=None,
            ping_interval=None,
        )


async def run_transceiver(settings: TransceiverSettings) -> None:
    backend = build_backend(settings)
    server = TransceiverServer(settings, backend)
    ws_server = await server.start()
    log.info(
        "transceiver ready on ws://%s:%d backend=%s", settings.host, settings.port, settings.backend
    )
    try:
        await ws_server.serve_forever()
    finally:
        await backend.aclose()
