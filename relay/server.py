"""The relay's HTTP and WebSocket connections: uvicorn's protocols, with nothing held forever.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with pings, dead
WebSocket peers; it does not bound a connection that never finishes its request, nor one
whose peer stops reading (``transport.close()`` waits for the write buffer to drain, which
then never happens). The protocol classes here add, per connection:

- a header deadline: the request line and headers within ``client_header_timeout_s``, from
  the connection (or, on a keep-alive connection, from the request's first byte), else
  ``408`` in the OpenAI error envelope and the connection is closed;
- a body deadline: the whole request body within ``client_body_timeout_s`` of the headers;
- a stall bound: a peer that takes nothing from the write buffer for
  ``client_stall_timeout_s`` (while something is waiting for it) has its connection
  aborted; a WebSocket session then ends as if the client had left. Until then each
  connection holds at most the transport's high-water mark (64 KiB) plus one frame, since
  uvicorn's WebSocket ``send`` waits for the buffer to drain before it writes;
- a connection limit: past ``max_client_connections`` open connections, a request or a
  WebSocket handshake is answered ``503`` in the envelope (a WebSocket is refused before the
  upgrade, so a client sees a failed handshake with that status) and the connection closed.

:func:`server_config` is the uvicorn configuration :mod:`relay.cli` serves the app with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request

from relay.errors import error_body
from relay.settings import RelaySettings

log = logging.getLogger(__name__)

FULL_MESSAGE = "The server has too many open connections; retry shortly."
FULL_CODE = "too_many_connections"
RETRY_AFTER_S = 1


class RelayConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the relay's settings to its protocol classes."""

    def __init__(self, app: Any, settings: RelaySettings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.relay = settings


def server_config(app: Any, settings: RelaySettings, **overrides: Any) -> RelayConfig:
    """How the relay serves ``app``: its protocols, pings, frame size, TLS and logging."""
    interval = settings.client_ping_interval_s or None  # 0: no pings
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": RelayHttpProtocol,
        "ws": RelayWebSocketProtocol,
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": interval,
        "ws_ping_timeout": settings.client_ping_timeout_s if interval else None,
        "log_level": settings.log_level,
        "log_config": None,  # our handler (text or JSON) formats uvicorn's lines too
        "lifespan": "off",
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
    }
    options.update(overrides)
    return RelayConfig(app, settings, **options)


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit on open files towards ``needed`` (each client session holds two:
    the client's and its transceiver's), as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open files are limited to %d, fewer than --max-client-connections needs (%d)",
            target,
            needed,
        )


def _settings(config: uvicorn.Config) -> RelaySettings:
    if isinstance(config, RelayConfig):
        return config.relay
    return RelaySettings.model_validate({})  # a plain uvicorn.Config: the defaults


def error_response(status: int, reason: str, message: str, code: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 response with the OpenAI error envelope, closing the connection."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps(error_body(message, code, kind)).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class StallWatch:
    """Calls ``on_stall`` once the peer has taken nothing from a non-empty write buffer for
    ``stall_s`` (checked every quarter of it): the connection's output is then stuck."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stall_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._stall_s = stall_s
        self._interval = max(0.05, stall_s / 4)
        self._on_stall = on_stall
        self._transport: asyncio.WriteTransport | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._size = 0
        self._since = 0.0

    def start(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._since = self._loop.time()
        self._handle = self._loop.call_later(self._interval, self._tick)

    def progressed(self) -> None:
        """The buffer drained below its low-water mark (``resume_writing``)."""
        self._since = self._loop.time()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        assert self._transport is not None
        size = self._transport.get_write_buffer_size()
        now = self._loop.time()
        if size == 0 or size < self._size:
            self._since = now
        self._size = size
        if now - self._since >= self._stall_s:
            self._on_stall()
            return
        self._handle = self._loop.call_later(self._interval, self._tick)


class RelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with header and body deadlines, the stall bound and the
    connection limit."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.settings = _settings(config)
        self.stall = StallWatch(self.loop, self.settings.client_stall_timeout_s, self._stalled)
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stall.start(transport)
        self._arm(self.settings.client_header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stall.stop()
        self._disarm()
        super().connection_lost(exc)

    def resume_writing(self) -> None:
        self.stall.progressed()
        super().resume_writing()

    def handle_websocket_upgrade(self) -> None:
        self.stall.stop()  # the WebSocket protocol takes over the connection, and its bounds
        self._disarm()
        super().handle_websocket_upgrade()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # a keep-alive connection's next request
            self._arm(self.settings.client_header_timeout_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        upgrading = self.parser.should_upgrade() and self._should_upgrade()
        if upgrading or len(self.connections) <= self.settings.max_client_connections:
            super().on_headers_complete()
        else:
            log.warning(
                "%s: refused a request: %d open connections",
                _peer(self.transport),
                len(self.connections),
            )
            app, self.app = self.app, _refuse_full  # answered with 503 instead of served
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        if not upgrading:
            self._arm(self.settings.client_body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Deadlines
    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _header_timeout(self) -> None:
        self.deadline = None
        timeout_s = self.settings.client_header_timeout_s
        log.info("%s: no complete request headers within %.1f s", _peer(self.transport), timeout_s)
        idle = self.cycle is None or self.cycle.response_complete
        message = f"The request headers did not arrive within {timeout_s:g} s."
        self._give_up(idle, message)

    def _body_timeout(self) -> None:
        self.deadline = None
        timeout_s = self.settings.client_body_timeout_s
        log.info("%s: no complete request body within %.1f s", _peer(self.transport), timeout_s)
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        if cycle is not None:  # the app's receive() gets http.disconnect, its send is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self._give_up(answer, f"The request body did not arrive within {timeout_s:g} s.")

    def _give_up(self, answer: bool, message: str) -> None:
        if self.transport.is_closing():
            return
        if answer:
            response = error_response(408, "Request Timeout", message, "request_timeout")
            self.transport.write(response)
        self.transport.close()  # with output stuck, the stall bound aborts it

    def _stalled(self) -> None:
        timeout_s = self.settings.client_stall_timeout_s
        log.info(
            "%s: the client read nothing for %.1f s; closing", _peer(self.transport), timeout_s
        )
        self._disarm()
        self.transport.abort()


async def _refuse_full(scope: Any, receive: Any, send: Any) -> None:
    """Past the connection limit: 503 in the envelope, and the connection closed."""
    body = json.dumps(error_body(FULL_MESSAGE, FULL_CODE, "server_error")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the stall bound and the connection limit."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.settings = _settings(config)
        self.stall = StallWatch(self.loop, self.settings.client_stall_timeout_s, self._stalled)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.stall.start(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stall.stop()
        super().connection_lost(exc)

    def resume_writing(self) -> None:
        self.stall.progressed()
        super().resume_writing()

    def handle_connect(self, event: Request) -> None:
        if len(self.connections) <= self.settings.max_client_connections:
            super().handle_connect(event)
            return
        log.warning(
            "%s: refused a WebSocket: %d open connections",
            _peer(self.transport),
            len(self.connections),
        )
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        response = error_response(
            503, "Service Unavailable", FULL_MESSAGE, FULL_CODE, retry_after=str(RETRY_AFTER_S)
        )
        self.transport.write(response)
        self.transport.close()

    def _stalled(self) -> None:
        timeout_s = self.settings.client_stall_timeout_s
        log.warning(
            "%s: the WebSocket client read nothing for %.1f s; closing its session",
            _peer(self.transport),
            timeout_s,
        )
        # A close frame would wait behind what the client has not read: the connection is
        # dropped instead, and the session ends as when a client leaves.
        self.transport.abort()
