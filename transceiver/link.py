"""The relay <-> transceiver link: one WebSocket per relay and transceiver, many sessions.

The frames are transceiver/protocol/link.py's. The carrier is a WebSocket (``/v1/link`` on
the transceiver's port), so the link secret is checked once, at its handshake (401 as for
every request), ``wss://`` members get TLS as before, and its pings notice a peer that
vanished without a FIN within ``2 * PING_S``. Frames written in one event-loop iteration go
out as one message: one write, one syscall for all of them; on a busy link the relay's
audio appends wait up to a ``coalesce_s`` for the next (:meth:`Link.write`). That message
is written on the carrier's transport as it stands (:func:`frame_header`, then the frames'
own pieces: no copy on the transceiver's side, one masked copy on the relay's), not through
``websockets``' ``send``, which joins a batch and then copies it again into the serialized
frame; the carrier's state and its flow control are honoured as ``send`` would. What comes
in is dispatched as ``websockets`` parses it (:class:`DirectCarrier`), not queued for a
reader task to wake up for.

A :class:`LinkSession` is one session on a link, with the part of a ``websockets``
connection that the relay's and the transceiver's session code use: ``send``, ``recv`` and
async iteration, ``close(code, reason)``, ``state``, ``protocol.close_rcvd``, and
``ConnectionClosed`` when it has ended. When the link dies, every session on it ends
without a close frame (1006), as a dropped WebSocket would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import OK_CLOSE_CODES, Close, Frame, Opcode
from websockets.protocol import Event, Side, State

try:  # the one import of it: relay/direct.py and loadgen/client.py take it from here
    from websockets.speedups import apply_mask as apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask as apply_mask

from transceiver.protocol import link as frames
from transceiver.protocol.link import Kind, LinkError
from transceiver.protocol.wsframe import frame_header

log = logging.getLogger(__name__)


class MaskKeys:
    """Masking keys for the frames a WebSocket client sends (RFC 6455 section 5.3: from a
    strong source of entropy, unpredictable), drawn from the system's random source 4 KiB
    at a time rather than one system call a frame (the relay's link messages, the load
    generator's frames)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at + 4 > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        self._at += 4
        return self._pool[self._at - 4 : self._at]


_masks = MaskKeys()

_OK_CODES = {int(code) for code in OK_CLOSE_CODES}

# Bytes a session may have in flight each way before its sender waits for the reader
# (websockets read 4 frames ahead; one frame past the window may be max_frame_bytes).
WINDOW_BYTES = 1 << 20
# A batch is cut after this many bytes (a larger frame goes alone).
BATCH_BYTES = 1 << 20
# How long a close waits for the peer's echo, as websockets' close_timeout.
CLOSE_TIMEOUT_S = 10.0

# Where a relay's link is served on a transceiver.
LINK_PATH = "/v1/link"
# Called by the transceiver for each OPEN: a refusal (status, reason), or None to accept.
OnOpen = Callable[["LinkSession", bytes], "tuple[int, str] | None"]


class DirectCarrier(Connection):
    """A link's carrier whose messages reach the link as ``websockets`` parses them, in
    order, in the same callback: no queue, no wake-up of a reader task for each (the link
    has its own flow control, per session). Only whole binary messages take this way (a
    link never sends others); a text or fragmented one goes to the queue, where the link's
    reader refuses it. Messages parsed before the link attaches wait for it, in order (the
    transport stops reading past ``HOLD_BYTES`` of them)."""

    HOLD_BYTES = 1 << 20
    _on_message: Callable[[bytes], None] | None = None
    _held: list[bytes] | None = None
    held_bytes = 0  # of the messages waiting for the link to attach

    def carries_link(self) -> bool:
        return True

    def attach(self, on_message: Callable[[bytes], None]) -> None:
        held, self._held = self._held or [], None
        was_paused, self.held_bytes = self.held_bytes >= self.HOLD_BYTES, 0
        self._on_message = on_message
        for message in held:
            on_message(message)
        if was_paused:
            self.transport.resume_reading()

    def process_event(self, event: Event) -> None:
        if (
            isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and self.carries_link()
        ):
            message = bytes(event.data)
            if self._on_message is not None:
                self._on_message(message)
                return
            if self._held is None:
                self._held = []
            self._held.append(message)
            self.held_bytes += len(message)
            if self.held_bytes >= self.HOLD_BYTES:
                self.transport.pause_reading()
            return
        super().process_event(event)


class LinkClientConnection(DirectCarrier, ClientConnection):
    """The relay's side of a link's carrier."""


class LinkServerConnection(DirectCarrier, ServerConnection):
    """A transceiver's connections: a relay's link (``/v1/link``) is a direct carrier,
    a session's own WebSocket (``/v1/sessions``) is not."""

    _link: bool | None = None

    def carries_link(self) -> bool:
        if self._link is None:
            self._link = self.request is not None and is_link_path(self.request.path)
        return self._link


def is_link_path(target: str) -> bool:
    """Whether a request target (its query aside) asks for the link: the transceiver's
    handler and :class:`LinkServerConnection` must agree on it."""
    return urlsplit(target).path == LINK_PATH


def carrier_max_size(max_frame_bytes: int) -> int:
    """The carrier's largest message: a batch, or one largest frame with its header."""
    return max(max_frame_bytes, BATCH_BYTES) + frames.CONTROL_BYTES + frames.HEADER.size


class LinkSession:
    """One session on a link (see the module's docstring)."""

    def __init__(self, link: Link, session_id: int) -> None:
        self.link = link
        self.id = session_id
        self.state = State.OPEN
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self._rcvd_then_sent: bool | None = None
        self._inbox: deque[tuple[str | bytes, int]] = deque()
        self._readable = asyncio.Event()
        self._closed = asyncio.Event()
        self._send_credit = WINDOW_BYTES  # bytes we may still send
        self._credited = asyncio.Event()
        self._recv_budget = WINDOW_BYTES  # bytes the peer may still send
        self._consumed = 0  # read since the last CREDIT we sent
        # Takes a frame as it arrives, on the link's reader, instead of the inbox (and the
        # wake of whoever reads it): ``take(payload, text)``, a text frame's payload UTF-8
        # checked already; ``False``: not now, the inbox it is. Only while nothing waits
        # in the inbox, so frames stay in order.
        self.take: Callable[[bytes, bool], bool] | None = None

    @property
    def protocol(self) -> LinkSession:
        """``upstream.protocol.close_rcvd`` reads as on a ``websockets`` connection."""
        return self

    def _exception(self) -> ConnectionClosed:
        rcvd, sent = self.close_rcvd, self.close_sent
        if rcvd is None or sent is None:
            return ConnectionClosedError(rcvd, sent)
        order = self._rcvd_then_sent
        if {rcvd.code, sent.code} <= _OK_CODES:
            return ConnectionClosedOK(rcvd, sent, order)
        return ConnectionClosedError(rcvd, sent, order)

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            data, text = message.encode(), True
        else:
            data, text = bytes(message), False
        while not self.offer(data, text):
            await self.wait_credit()

    def offer(self, data: bytes, text: bool, later: bool = False) -> bool:
        """Send a text (UTF-8) or binary frame now if the window has room; ``False``: it
        was not sent (wait for :meth:`wait_credit`). ``ConnectionClosed`` once ended.
        ``later``: it may wait a little for others (:meth:`Link.write`)."""
        if self.state is not State.OPEN:
            raise self._exception()
        if self._send_credit <= 0:
            return False
        self._send_credit -= len(data)
        self.link.write(
            frames.header(Kind.TEXT if text else Kind.BINARY, self.id, len(data)), data, later=later
        )
        return True

    async def wait_credit(self) -> None:
        """Until the peer gives the window room again; ``ConnectionClosed`` once ended."""
        while self._send_credit <= 0 and self.state is State.OPEN:
            self._credited.clear()
            await self._credited.wait()
        if self.state is not State.OPEN:
            raise self._exception()

    async def recv(self) -> str | bytes:
        while not self._inbox:
            if self.state is State.CLOSED:
                raise self._exception()
            self._readable.clear()
            await self._readable.wait()
        message, size = self._inbox.popleft()
        self._read(size)
        return message

    def _read(self, size: int) -> None:
        """``size`` bytes were read: the peer gets credit for them every half window."""
        self._consumed += size
        if self._consumed >= WINDOW_BYTES // 2 and self.state is State.OPEN:
            self.link.write(frames.encode_credit(self.id, self._consumed))
            self._recv_budget += self._consumed
            self._consumed = 0

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Frames until the session ends: quietly after a normal close, else
        ``ConnectionClosedError``, as ``websockets`` does."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close and wait (``CLOSE_TIMEOUT_S`` at most) for the peer's echo."""
        if self.state is State.OPEN:
            self.state = State.CLOSING
            self.close_sent = Close(code, reason)
            self.link.write(frames.encode_close(self.id, code, reason))
            self._wake()
        try:
            await asyncio.wait_for(self._closed.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.abort()

    def preload(self, message: str) -> None:
        """A first frame to read, given by the link itself (the transceiver's spec)."""
        self._inbox.append((message, 0))
        self._readable.set()

    def abort(self) -> None:
        """End the session now, without waiting for the peer (1006)."""
        self._end()

    def _deliver(self, frame: frames.Frame) -> None:
        self._recv_budget -= len(frame.payload)
        if self._recv_budget < -self.link.max_frame_bytes:
            raise LinkError(f"session {self.id} sent past its window")
        if self.state is not State.OPEN:
            return  # we closed it: nobody reads it any more, what is in flight is dropped
        payload, text = frame.payload, frame.kind is Kind.TEXT
        if text and not payload.isascii():
            frames.decode_text(frame)  # LinkError where it is not UTF-8
        if self.take is not None and not self._inbox and self.take(payload, text):
            self._read(len(payload))
            return
        self._inbox.append((payload.decode() if text else payload, len(payload)))
        self._readable.set()

    def _credit(self, size: int) -> None:
        self._send_credit += size
        self._credited.set()

    def _peer_closed(self, code: int, reason: str) -> None:
        self.close_rcvd = Close(code, reason)
        self._rcvd_then_sent = self.state is State.OPEN
        if self.state is State.OPEN:  # echo it, as RFC 6455 asks
            self.close_sent = Close(code, reason)
            self.link.write(frames.encode_close(self.id, code, reason))
        self._end()

    def _end(self) -> None:
        self.state = State.CLOSED
        self.link.sessions.pop(self.id, None)
        self._closed.set()
        self._wake()

    def _wake(self) -> None:
        self._readable.set()
        self._credited.set()


class Link:
    """One carrier connection and its sessions. :meth:`run` reads until the carrier ends;
    ``on_open`` (the transceiver's) answers each ``OPEN``."""

    def __init__(
        self,
        carrier: Connection,
        max_frame_bytes: int,
        on_open: OnOpen | None = None,
        coalesce_s: float = 0.0,
    ) -> None:
        self.carrier = carrier
        self.coalesce_s = coalesce_s
        self.max_frame_bytes = max_frame_bytes
        self.sessions: dict[int, LinkSession] = {}
        self.opening: dict[int, asyncio.Future[frames.Frame]] = {}
        self.closed = False
        self._on_open = on_open
        self._out: deque[tuple[int, tuple[bytes, ...]]] = deque()  # (size, pieces) a frame
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._flushed_at = -math.inf  # the loop's time at the last flush
        self._backstop: asyncio.TimerHandle | None = None  # flushes frames written later
        self._draining: asyncio.Task[None] | None = None  # waits for a full transport
        self._failed = False  # a malformed message came: what follows is dropped
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0

    def write(self, *pieces: bytes, later: bool = False) -> None:
        """Queue one frame (its pieces); the frames queued in this loop iteration leave
        together in the next (:meth:`_flush`, a callback: no task wakes for it).

        A frame written ``later`` (an audio append) may wait for others: while less than
        ``coalesce_s`` has passed since the last flush it stays queued, and leaves with the
        first frame written after that time, or with any frame not written ``later``, or
        at the latest ``2 * coalesce_s`` after the last flush (a timer). On a busy link
        that is one write, and one wake-up of the peer, a ``coalesce_s`` instead of one a
        loop iteration; a frame on a quiet link leaves at once."""
        if self.closed:
            return
        self._out.append((sum(map(len, pieces)), pieces))
        if self._flush_scheduled:
            return
        if later and self.coalesce_s:
            due = self._flushed_at + self.coalesce_s
            if self._loop.time() < due:
                if self._backstop is None:
                    self._backstop = self._loop.call_at(due + self.coalesce_s, self._flush)
                return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued, in batches of at most ``BATCH_BYTES``; once the carrier's
        transport is full (``websockets`` paused writing), the rest waits for it to drain,
        as ``send`` would. A carrier that is no longer open takes nothing: its reader ends
        the link."""
        self._flush_scheduled = False
        self._flushed_at = self._loop.time()
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        carrier = self.carrier
        while self._out and self._draining is None and not self.closed:
            if carrier.protocol.state is not State.OPEN:
                self._out.clear()
                return
            batch: list[bytes] = []
            size = 0
            while self._out and (not batch or size + self._out[0][0] <= BATCH_BYTES):
                frame_size, pieces = self._out.popleft()
                batch.extend(pieces)
                size += frame_size
            try:
                self._send(batch, size)
            except (OSError, RuntimeError):  # the transport is closing: as above
                self._out.clear()
                return
            if carrier.paused:
                self._draining = asyncio.create_task(self._drain())

    def _send(self, pieces: list[bytes], size: int) -> None:
        """One binary message on the carrier: its header and ``pieces`` in one write."""
        if self.carrier.protocol.side is Side.CLIENT:  # a client masks what it sends
            mask = _masks.next()
            pieces = [apply_mask(b"".join(pieces), mask)]
        else:
            mask = b""
        self.carrier.transport.writelines([frame_header(size, mask=mask), *pieces])

    async def _drain(self) -> None:
        try:
            await self.carrier.drain()
        except Exception:  # the connection is lost: the reader ends the link
            return
        self._draining = None
        self._flush()

    def new_session(self) -> LinkSession:
        self._next_id = (self._next_id + 1) % (1 << 32) or 1
        session = LinkSession(self, self._next_id)
        self.sessions[session.id] = session
        return session

    async def run(self) -> None:
        """Read and dispatch until the carrier ends; then every session ends (1006). A
        :class:`DirectCarrier` hands its messages to :meth:`_receive` as it parses them;
        what still comes through its queue is refused."""
        carrier = self.carrier
        direct = isinstance(carrier, DirectCarrier)
        if isinstance(carrier, DirectCarrier):
            carrier.attach(self._receive)
        try:
            async for message in self.carrier:
                if isinstance(message, str):
                    raise LinkError("a text message on the link")
                if direct:  # a whole binary message would have been taken as parsed
                    raise LinkError("a fragmented message on the link")
                self._parse(message)
        except LinkError as exc:
            self._failed = True
            await self._refuse(exc)
        except ConnectionClosed:
            pass
        finally:
            self._failed = True  # nothing more is dispatched, whatever the carrier reads
            self._lost()

    def _parse(self, message: bytes) -> None:
        for frame in frames.parse(message, self.max_frame_bytes):
            self._dispatch(frame)

    def _receive(self, message: bytes) -> None:
        """A carrier message, from a :class:`DirectCarrier` as it is parsed."""
        if self._failed:
            return
        try:
            self._parse(message)
        except LinkError as exc:
            self._failed = True
            task = asyncio.create_task(self._refuse(exc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # a bug: this link ends, as when its reader failed
            self._failed = True
            log.exception("closing the link to %s", _peer(self.carrier))
            self.carrier.transport.abort()

    async def _refuse(self, exc: LinkError) -> None:
        log.error("closing the link to %s: %s", _peer(self.carrier), exc)
        with contextlib.suppress(ConnectionClosed):
            await self.carrier.close(1002, "malformed link frame")

    def _lost(self) -> None:
        self.closed = True
        if self._backstop is not None:
            self._backstop.cancel()
        if self._draining is not None:
            self._draining.cancel()
        for session in list(self.sessions.values()):
            session._end()
        for waiter in self.opening.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the link to the transceiver closed"))
        self.opening.clear()

    def _dispatch(self, frame: frames.Frame) -> None:
        session = self.sessions.get(frame.session)
        if frame.kind in (Kind.TEXT, Kind.BINARY):
            if session is not None:
                session._deliver(frame)
        elif frame.kind is Kind.CREDIT:
            if session is not None:
                session._credit(frames.decode_credit(frame))
        elif frame.kind is Kind.CLOSE:
            code, reason = frames.decode_code(frame)
            if session is not None:
                session._peer_closed(code, reason)
        elif frame.kind is Kind.OPEN:
            self._open(frame)
        else:  # ACCEPTED, REFUSED: the answer to an open of ours
            waiter = self.opening.pop(frame.session, None)
            if waiter is None:
                raise LinkError(f"an unexpected {frame.kind.name} for session {frame.session}")
            if not waiter.done():
                waiter.set_result(frame)
            elif frame.kind is Kind.ACCEPTED:  # we stopped waiting: end it there
                self.write(frames.encode_close(frame.session, 1001, "placement timed out"))

    def _open(self, frame: frames.Frame) -> None:
        if self._on_open is None:
            raise LinkError("an OPEN frame sent to the relay")
        if frame.session in self.sessions or frame.session == 0:
            raise LinkError(f"an OPEN for session {frame.session}, which is taken")
        session = LinkSession(self, frame.session)
        refusal = self._on_open(session, frame.payload)
        if refusal is not None:
            self.write(frames.encode_refused(frame.session, *refusal))
            return
        self.sessions[session.id] = session
        self.write(frames.encode(Kind.ACCEPTED, frame.session))

    async def aclose(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.carrier.close()


def _peer(carrier: Connection) -> Any:
    with contextlib.suppress(Exception):
        return carrier.remote_address
    return "?"
