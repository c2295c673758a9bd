"""A client session's frames, both ways, between its WebSocket and its transceiver.

On a link session (relay/link.py) behind the relay's own WebSocket protocol, the client's
frames take the direct path (relay/direct.py): each goes to the link as it is read, with no
ASGI message, task switch or parse, and the transceiver's go out without ASGI either.
Otherwise (one WebSocket per session, or another ASGI server) they go through ASGI as any
FastAPI WebSocket's. Both behave the same way to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay.direct import EXTENSION, DirectWebSocketProtocol
from relay.edge import Edge
from relay.link import Upstream
from relay.ratelimit import PASS, SessionRates
from transceiver.link import LinkSession
from transceiver.observability import Tally
from transceiver.protocol.wire import starts_as_append
from transceiver.protocol.wsframe import frame_header

log = logging.getLogger(__name__)

# Server frames taken for a client in one loop iteration, at most (then they wait in the
# session's inbox, which the link's window bounds): about a reply's events, 20 ms frames.
TAKE_BYTES = 256 * 1024

SendToClient = Callable[[str | bytes], Awaitable[None]]


async def forward(
    websocket: WebSocket,
    upstream: Upstream,
    edge: Edge,
    rates: SessionRates | None = None,
) -> None:
    """Pass frames both ways unchanged until either side ends; with ``rates``, the key's
    rate limits apply (relay/ratelimit.py: a refused ``response.create``, a
    ``rate_limits.updated`` after each ``response.done``).

    When the client leaves, the caller closes upstream. When upstream ends (the transceiver
    closed the session, drained, or died), the client gets its close code, or an error and
    1011 for a lost transceiver, whichever direction noticed first.
    """
    events_in, events_out = edge.metrics.events_in, edge.metrics.events_out
    extension = websocket.scope.get("extensions", {}).get(EXTENSION)
    direct = None
    if extension is not None and isinstance(upstream, LinkSession):
        direct = DirectSession(extension["attach"], upstream, rates, events_in, events_out)
    send = direct.send if direct is not None else _asgi_sender(websocket)
    reading = (
        direct.read(websocket)
        if direct is not None
        else _asgi_client_to_upstream(websocket, upstream, rates, events_in)
    )
    to_up = asyncio.create_task(reading)
    to_client = asyncio.create_task(_upstream_to_client(upstream, send, rates, direct, events_out))
    try:
        try:
            await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # the other direction ends too, also where forward itself is cancelled
            for task in (to_up, to_client):
                task.cancel()
        results = await asyncio.gather(to_up, to_client, return_exceptions=True)
    finally:  # nothing more is taken for the client
        if direct is not None:
            direct.end_taking()
    client_left = any(result is True for result in results)
    if client_left or any(isinstance(r, WebSocketDisconnect) for r in results):
        await close_discarding(upstream)
        return
    await _answer_upstream_end(websocket, upstream, edge)


async def _asgi_client_to_upstream(
    websocket: WebSocket, upstream: Upstream, rates: SessionRates | None, events_in: Tally
) -> bool:
    """The client's frames through ASGI, until the client leaves (``True``) or upstream
    ends (``False``)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return True
        events_in.inc()
        data = message.get("text")
        payload = data if data is not None else message.get("bytes") or b""
        refusal = rates.refuse(payload) if rates is not None else None
        if refusal is not None:  # past the key's rate limits: answered here
            try:
                await websocket.send_text(refusal)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return True
            continue
        try:
            await upstream.send(payload)
        except ConnectionClosed:
            return False  # upstream ended: answered by forward


async def _upstream_to_client(
    upstream: Upstream,
    send: SendToClient,
    rates: SessionRates | None,
    direct: DirectSession | None,
    events_out: Tally,
) -> bool:
    """Upstream's frames that reach ``forward``'s task (through ASGI, or on the direct path
    those not taken as read), until upstream ends (``False``) or the client is gone
    (``True``)."""
    async for frame in upstream:
        events_out.inc()
        if direct is not None:
            direct.sending = True  # frames that come meanwhile wait in the inbox
        try:
            await _to_client(send, upstream, frame, rates)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return True
        finally:
            if direct is not None:
                direct.sending = False
    return False


class DirectSession:
    """A session on the direct path, both ways.

    The client's frames go to the link as they are read; when the link's window for the
    session is full, reading stops until the transceiver gives credit (the frames of the
    read in hand wait here, in order).

    The transceiver's frames are taken as the link reads them (``LinkSession.take``) and
    leave in one write a session per loop iteration (a reply's events, read in one link
    message, are one write to the client, not one each), except those the rate limits
    act on (``response.done``, and ``response.created`` where a limit is set:
    relay/ratelimit.py), and any while
    the client's transport is full or ``TAKE_BYTES`` wait already: those wait in the
    session's inbox for ``forward``'s task, which writes them after what was taken
    before, and nothing is taken while it holds one (:attr:`sending`), so the order stays.
    """

    def __init__(
        self,
        attach: Callable[[Callable[[bytes, bool], None]], DirectWebSocketProtocol],
        upstream: LinkSession,
        rates: SessionRates | None,
        events_in: Tally,
        events_out: Tally,
    ) -> None:
        self.upstream = upstream
        self.rates = rates
        self.events_in = events_in
        self.events_out = events_out
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = self.loop.create_future()
        self.held: deque[tuple[bytes, bool]] = deque()
        self.answered_full = False  # a refusal written here left the transport full
        self.flushing: asyncio.Task[None] | None = None
        self.sending = False  # forward's task holds a server frame
        self.taken: list[bytes] = []  # server frames (headers and payloads) to write
        self.taken_bytes = 0
        self.frames = attach(self.on_message)
        upstream.take = self.take
        self.frames.deliver_held()  # answered, or held, with self.frames at hand

    def take(self, payload: bytes, text: bool) -> bool:
        """A server frame as the link reads it: written with the others of this loop
        iteration; ``False``: not now (it goes through the inbox)."""
        if self.sending or self.taken_bytes >= TAKE_BYTES or not self.frames.writable_now:
            return False
        if self.rates is not None and not self.rates.passes(payload):
            return False  # counted, folded or answered by forward's task
        if not self.taken:
            self.loop.call_soon(self.write_taken)
        self.taken += (frame_header(len(payload), text=text), payload)
        self.taken_bytes += len(payload)
        return True

    def write_taken(self) -> None:
        """Write the server frames taken so far, in one write."""
        if not self.taken:
            return
        data, count = b"".join(self.taken), len(self.taken) // 2
        self.taken.clear()
        self.taken_bytes = 0
        self.events_out.inc(count)
        with contextlib.suppress(ClientDisconnected):  # the disconnect comes through receive()
            self.frames.write_frames(data)

    def end_taking(self) -> None:
        """The session's frames are over: what was taken is written, nothing more taken."""
        if self.upstream.take == self.take:
            self.upstream.take = None
        self.write_taken()

    def on_message(self, payload: bytes, text: bool) -> None:
        """A client frame (called by the protocol as it reads)."""
        self.events_in.inc()
        refusal = self.rates.refuse(payload) if self.rates is not None else None
        try:
            if refusal is not None:  # past the key's rate limits: answered here,
                self.write_taken()  # after the server frames taken before it
                self.frames.send_frame(refusal.encode(), True)
                if not self.frames.writable_now:  # a client that does not read its
                    self.answered_full = True  # answers is not read either until it does
                    self._hold()
            elif self.held or not self.upstream.offer(payload, text, starts_as_append(payload)):
                self.held.append((payload, text))
                self._hold()
        except ClientDisconnected:
            pass  # the disconnect comes through receive()
        except ConnectionClosed:
            self._end()

    def _hold(self) -> None:
        """Stop reading the client until :meth:`_flush` has passed on what is held and,
        where an answer given here found the client's transport full, the client has
        taken it."""
        self.frames.pause()
        if self.flushing is None:
            self.flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.held or self.answered_full:
                if self.held:
                    await self.upstream.wait_credit()
                    while self.held and self.upstream.offer(*self.held[0]):
                        self.held.popleft()
                else:
                    self.answered_full = False
                    await self.frames.drain()
        except ConnectionClosed:
            self._end()
            return
        except ClientDisconnected:
            return  # the disconnect comes through receive()
        finally:
            self.flushing = None
        self.frames.resume()

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    async def read(self, websocket: WebSocket) -> bool:
        """Until the client leaves (``True``) or upstream ends (``False``)."""
        try:
            while True:
                receive: asyncio.Future[Any] = asyncio.ensure_future(websocket.receive())
                await asyncio.wait({receive, self.ended}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    return False
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    return True
                # After attach() data comes to on_message; should any reach the queue, it
                # is passed on all the same, not dropped.
                text = message.get("text")
                payload = text.encode() if text is not None else message.get("bytes") or b""
                self.on_message(payload, text is not None)
        finally:
            self.frames.detach()
            if self.flushing is not None:
                self.flushing.cancel()

    async def send(self, frame: str | bytes) -> None:
        """A frame to the client, after those taken before it, once its transport's
        buffer is below the high-water mark, as uvicorn's ``send`` does."""
        self.write_taken()
        if not self.frames.writable_now:
            await self.frames.drain()
        if isinstance(frame, str):
            self.frames.send_frame(frame.encode(), True)
        else:
            self.frames.send_frame(frame, False)


def _asgi_sender(websocket: WebSocket) -> SendToClient:
    async def send(frame: str | bytes) -> None:
        if isinstance(frame, str):
            await websocket.send_text(frame)
        else:
            await websocket.send_bytes(frame)

    return send


async def _to_client(
    send: SendToClient, upstream: Upstream, frame: str | bytes, rates: SessionRates | None
) -> None:
    """A server frame to the client, with what the key's rate limits add to it: an event
    after it, a cancel upstream (relay/ratelimit.py)."""
    action = rates.on_server(frame) if rates is not None else PASS
    if not action.drop:
        await send(frame)
    for text in action.to_client:
        await send(text)
    with contextlib.suppress(ConnectionClosed):  # upstream ended: answered by forward
        for text in action.to_upstream:
            await upstream.send(text)


async def close_discarding(upstream: Upstream) -> None:
    """Close upstream, dropping what it still has for a client that is gone.

    A client that stopped reading leaves upstream's receive queue full, and a full queue
    stops reading (websockets' ``max_queue``), so the transceiver's closing frame would not
    be read before ``close_timeout`` (10 s): the session would stay open that long.
    """
    if upstream.state is State.CLOSED:
        return

    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in upstream:
                pass

    discarding = asyncio.create_task(discard())
    try:
        await upstream.close()
    finally:
        discarding.cancel()


async def _answer_upstream_end(websocket: WebSocket, upstream: Upstream, edge: Edge) -> None:
    """Pass on the transceiver's close code. A lost transceiver (no close frame) gets an
    ``error`` event and 1011, RFC 6455's code for a server that met an unexpected condition."""
    rcvd = upstream.protocol.close_rcvd
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, ConnectionClosed):
        if rcvd is None:
            log.warning("transceiver connection lost mid-session")
            await websocket.send_text(
                edge.error_event(
                    "The server lost this session's transceiver.", "transceiver_unavailable"
                )
            )
            await websocket.close(1011, "transceiver failed")
        else:
            await websocket.close(rcvd.code, rcvd.reason)
