"""The relay's HTTP and WebSocket connections: uvicorn's protocols, with nothing held forever.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with pings, dead
WebSocket peers; it does not bound a connection that never finishes its request, nor one
whose peer stops reading (``transport.close()`` waits for the write buffer to drain, which
then never happens). The protocol classes here add, per connection:

- a header deadline: the request line and headers within ``client_header_timeout_s``, from
  the connection (or, on a keep-alive connection, from the request's first byte), else
  ``408`` in the OpenAI error envelope and the connection is closed;
- a header size bound: at most ``client_max_header_bytes`` of request line and headers
  (counted as they arrive, so the parser never holds more than that and one read), else
  ``431``; a WebSocket handshake reaches the WebSocket protocol only through this one;
- a body deadline: the whole request body within ``client_body_timeout_s`` of the moment
  the request starts being served (a pipelined request waiting for an earlier one's
  response is not timed);
- pipelining kept in order: a request that fails (timeout, size, malformed) while an
  earlier one's response is still owed gets no answer of its own, which would be read as
  that earlier response: the connection is closed once the owed responses are sent;
- a stall bound: a peer that takes nothing from the write buffer for
  ``client_stall_timeout_s`` (while something is waiting for it) has its connection
  aborted; a WebSocket session then ends as if the client had left. "Took something" is
  counted from the bytes written, so a client that reads steadily, more slowly than it is
  written to, is not dropped. Until then each
  connection holds at most the transport's high-water mark (64 KiB) plus one frame, since
  uvicorn's WebSocket ``send`` waits for the buffer to drain before it writes;
- a connection limit: past ``max_client_connections`` open connections, a request or a
  WebSocket handshake is answered ``503`` in the envelope (a WebSocket is refused before the
  upgrade, so a client sees a failed handshake with that status) and the connection closed;
- every error uvicorn or websockets would answer in plain text (a malformed request, a
  refused or failed WebSocket handshake, a 500 before the handshake completes) answered in
  the OpenAI error envelope (https://platform.openai.com/docs/guides/error-codes);
- no ping timeout while uvicorn is not reading a WebSocket client (it stops until the app
  takes the message it holds): the client's pong may be waiting unread.

:func:`server_config` is the uvicorn configuration :mod:`relay.cli` serves the app with.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import resource
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
import uvicorn
import websockets.http11
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import SecurityError
from websockets.http11 import Request, Response

from relay.direct import DirectWebSocketProtocol
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
    allow_header_lines(settings.client_max_header_bytes)
    return RelayConfig(app, settings, **options)


def allow_header_lines(max_header_bytes: int) -> None:
    """Let a WebSocket handshake's header lines be as long as the relay's whole header
    bound (``--client-max-header-bytes``, counted as they arrive): websockets stops a line
    at 8 KiB (``WEBSOCKETS_MAX_LINE_LENGTH``, read once at its import), where an ephemeral
    key, which carries its session, may be longer, and the HTTP routes take it. The
    process's one setting, as the bound is."""
    websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, max_header_bytes)


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


class _HeadTooLarge(Exception):
    """Raised in a parser callback, to stop parsing a request already refused."""


def _settings(config: uvicorn.Config) -> RelaySettings:
    if isinstance(config, RelayConfig):
        return config.relay
    return RelaySettings.model_validate({})  # a plain uvicorn.Config: the defaults


def _envelope(status: int, message: str, code: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return json.dumps(error_body(message, code, kind)).encode()


def error_response(status: int, message: str, code: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 response with the OpenAI error envelope, closing the connection."""
    body = _envelope(status, message, code)
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class CountingTransport:
    """A transport, counting the bytes written to it: what the protocols here hand uvicorn
    as theirs, so every writer (uvicorn's cycles and protocols, this module) is counted.
    (A uvloop transport's ``write`` cannot be wrapped in place.)"""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += memoryview(data).nbytes
        self.inner.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _counting(transport: asyncio.BaseTransport) -> CountingTransport:
    if isinstance(transport, CountingTransport):  # the HTTP protocol's, after an upgrade
        return transport
    return CountingTransport(cast(asyncio.Transport, transport))


class StallWatch:
    """Calls ``on_stall`` once the peer has taken nothing from a non-empty write buffer for
    ``stall_s`` (checked every quarter of it): the connection's output is then stuck.

    What the peer took between two checks is the buffer's size before, plus what was
    written since (counted by :class:`CountingTransport`), less its size now: a buffer that
    creeps up below the high-water mark, so ``resume_writing`` never comes, still shows a
    peer that reads."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stall_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._stall_s = stall_s
        self._interval = max(0.05, stall_s / 4)
        self._on_stall = on_stall
        self._transport: CountingTransport | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._size = 0
        self._written = 0
        self._since = 0.0

    def start(self, transport: CountingTransport) -> None:
        self._transport = transport
        self._written = transport.written
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
        written = self._transport.written
        taken = self._size + written - self._written - size
        if size == 0 or taken > 0:
            self._since = now
        self._size, self._written = size, written
        if now - self._since >= self._stall_s:
            self._on_stall()
            return
        self._handle = self._loop.call_later(self._interval, self._tick)


class RelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with header and body deadlines, the header size bound, the
    stall bound and the connection limit."""

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
        self.head_bytes: int | None = 0  # bytes of the head being received; None in a body
        self.running: RequestResponseCycle | None = None  # the cycle whose app was started
        self.refusing = False  # given up: what the client sends next is discarded

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        counting = _counting(transport)
        super().connection_made(cast(asyncio.Transport, counting))
        self.stall.start(counting)
        self._arm(self.settings.client_header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stall.stop()
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head's bytes counted and its errors in the envelope."""
        if self.refusing:
            return
        self._unset_keepalive_if_required()
        if self.head_bytes is not None:
            # Counted before parsing: a head past the bound is refused after one read (at
            # most asyncio's read size), never parsed on and on.
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if not self.refusing:  # else a bound stopped the parser
                log.info("%s: invalid HTTP request: %s", _peer(self.transport), exc)
                self._give_up(400, f"Invalid HTTP request: {exc}", "bad_request")
            return
        if self.head_bytes is not None and self.head_bytes > self.settings.client_max_header_bytes:
            self._head_too_large()

    def _head_too_large(self) -> None:
        limit = self.settings.client_max_header_bytes
        log.info("%s: request headers past %d bytes", _peer(self.transport), limit)
        message = f"The request line and headers exceed {limit} bytes."
        self._give_up(431, message, "request_headers_too_large")

    def resume_writing(self) -> None:
        self.stall.progressed()
        super().resume_writing()

    def handle_websocket_upgrade(self) -> None:
        self.stall.stop()  # the WebSocket protocol takes over the connection, and its bounds
        self._disarm()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (uvicorn would answer it in plain text)."""
        self._give_up(400, msg, "bad_request")

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Run at once, or once the pipelined requests before it are answered: the body's
        # deadline starts here, not while the request waits its turn.
        self.running = cycle
        super()._start_asgi_task(cycle, app)
        if cycle.more_body and not self.refusing:
            self._arm(self.settings.client_body_timeout_s, self._body_timeout)

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # a keep-alive connection's next request
            self._arm(self.settings.client_header_timeout_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.settings.client_max_header_bytes:  # a whole head in one read
            self._head_too_large()
            raise _HeadTooLarge  # stops the parser: nothing of this request is served
        self.head_bytes = None
        upgrading = self.parser.should_upgrade() and self._should_upgrade()
        if upgrading or len(self.connections) <= self.settings.max_client_connections:
            super().on_headers_complete()
            return
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

    def on_message_complete(self) -> None:
        self._disarm()
        self.head_bytes = 0  # what follows is the next request's head
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
        message = f"The request headers did not arrive within {timeout_s:g} s."
        self._give_up(408, message, "request_timeout")

    def _body_timeout(self) -> None:
        self.deadline = None
        timeout_s = self.settings.client_body_timeout_s
        log.info("%s: no complete request body within %.1f s", _peer(self.transport), timeout_s)
        message = f"The request body did not arrive within {timeout_s:g} s."
        self._give_up(408, message, "request_timeout")

    def _give_up(self, status: int, message: str, code: str) -> None:
        """Answer the failed request with ``status`` and close; or, with a response still
        owed to an earlier request, send nothing (it would be read as that response) and
        close once the owed responses are sent."""
        if self.refusing or self.transport.is_closing():
            return
        self.refusing = True
        self._disarm()
        failed = self.cycle if self.head_bytes is None else None  # it failed in its body
        if failed is not None:  # its app gets http.disconnect, what it sends is dropped
            failed.disconnected = True
            failed.message_event.set()
            self.pipeline = deque(entry for entry in self.pipeline if entry[0] is not failed)
        last = self.pipeline[0][0] if self.pipeline else self.running
        if last is not None and last is not failed and not last.response_complete:
            last.keep_alive = False  # uvicorn closes the connection after its response
            return
        if failed is None or not failed.response_started:
            self.transport.write(error_response(status, message, code))
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


class RelayWebSocketProtocol(DirectWebSocketProtocol):
    """uvicorn's WebSocket protocol, with the direct frame path (relay/direct.py), the stall
    bound, the connection limit, its errors in the envelope, and no ping timeout while the
    client's pong cannot have been read."""

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
        # Every refusal websockets or uvicorn makes (a bad handshake, a 500, a close before
        # the accept) goes through reject(): answered in the envelope, not plain text.
        self.conn.reject = _reject  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        counting = _counting(transport)
        super().connection_made(cast(asyncio.Transport, counting))
        self.stall.start(counting)

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
        response = error_response(503, FULL_MESSAGE, FULL_CODE, retry_after=str(RETRY_AFTER_S))
        self.transport.write(response)
        self.transport.close()

    def keepalive_timeout(self) -> None:
        if self.read_paused and not self.close_sent and not self.transport.is_closing():
            # uvicorn reads nothing more until the app takes the message it holds: the pong
            # may be waiting unread. A live client is not failed for it: ping again later.
            self.pong_timer = self.pending_ping_payload = None
            self.schedule_ping()
            return
        super().keepalive_timeout()

    def handle_handshake_exception(self) -> None:
        """A handshake websockets could not parse; past its bounds on a line's length or the
        number of headers (websockets.http11: 8192 bytes, 128 headers), 431."""
        self.handshake_complete = self.close_sent = True
        exc = self.conn.handshake_exc
        self.conn.data_to_send()  # websockets' own answer, if any: replaced by ours
        cause = exc.__cause__ if exc is not None else None
        if isinstance(cause, SecurityError):
            message = f"The handshake's headers exceed a limit: {cause}."
            response = error_response(431, message, "request_headers_too_large")
        else:
            response = error_response(400, f"Invalid WebSocket handshake: {exc}.", "bad_request")
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


def _reject(status: int | HTTPStatus, text: str) -> Response:
    """websockets' ``ServerProtocol.reject``, with the OpenAI error envelope for a body."""
    status = HTTPStatus(status)
    message = text.strip() or status.phrase
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        message, code = "The server had an error while processing your request.", "internal_error"
    else:
        code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    body = _envelope(status.value, message, code)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
