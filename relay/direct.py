"""uvicorn's sans-I/O WebSocket protocol with a direct path for a session's frames.

Through ASGI, each client frame costs websockets' generator parser (about 11 us for a 20 ms
append), an ASGI message on a queue, a task switch to the app, and a pause and a resume of
the socket's reading (uvicorn reads nothing more until the app takes the message): about
half the relay's CPU per frame under load (``python -m bench frames``). A session's frames
need none of it: they go to the link as they are.

An app that finds :data:`EXTENSION` in a WebSocket scope may, once it has accepted, call
``scope["extensions"][EXTENSION]["attach"](on_message)``, and then ``deliver_held()`` on
the protocol it returns. From then on:

- every data message reaches ``on_message(payload, text)`` synchronously, in order, as it is
  read (``payload`` the message's bytes; a text message's UTF-8 checked first, else the
  connection fails with 1007 as before), instead of a ``websocket.receive`` ASGI message.
  ``websocket.disconnect`` still comes through ``receive()``;
- a whole, unfragmented, masked, uncompressed text or binary frame, the common case, is
  parsed here: its header and a C unmask (websockets' own ``apply_mask``). Anything else
  (control frames, fragments, compressed frames, a frame split across reads, a frame
  larger than allowed, a protocol error) goes to websockets' parser from that byte on,
  exactly as before; this path takes over again once websockets' parser waits for the
  next frame's first byte (``_between_frames``: not inside a frame, whose header it may
  have taken with nothing left buffered);
- :meth:`DirectWebSocketProtocol.send_frame` writes a text or binary frame at once
  (server frames are not masked, RFC 6455 section 5.1), :meth:`write_frames` several
  already framed in one write, :meth:`drain` waits for the
  transport's buffer to go below its low-water mark, and :meth:`pause` / :meth:`resume` stop
  and restart reading for a receiver that cannot take more.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.streams import StreamReader

from transceiver.link import apply_mask
from transceiver.protocol.wsframe import frame_header

EXTENSION = "realtime-relay.frames"

OnMessage = Callable[[bytes, bool], None]

_TEXT, _BINARY = 0x81, 0x82  # FIN, no RSV bits, opcode 1 or 2
_U16, _U64 = struct.Struct("!H"), struct.Struct("!Q")


_AT_EOF = StreamReader.at_eof.__code__


def _between_frames(conn: Any) -> bool:
    """Whether websockets' parser waits for a frame's first byte, with nothing buffered:
    suspended in ``StreamReader.at_eof``, where ``Protocol.parse`` starts each frame. A
    frame cut inside its header leaves the parser further in (its header, length or mask
    taken, the buffer empty): the bytes that follow are the rest of that frame, not a new
    one. Any other state (another websockets' parser included) reads as inside a frame,
    so websockets parses: slower, never wrong."""
    parser = conn.parser
    while (inner := getattr(parser, "gi_yieldfrom", None)) is not None:
        parser = inner
    return getattr(parser, "gi_code", None) is _AT_EOF and not conn.reader.buffer


def _drop(payload: bytes, text: bool) -> None:
    """Frames read after the app detached: the session has ended."""


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module's docstring."""

    _on_message: OnMessage | None = None
    _fed = True  # websockets was given bytes since its parser was last between frames

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:
            scope["extensions"][EXTENSION] = {"attach": self.attach}

    # -- the app's side ------------------------------------------------------------

    def attach(self, on_message: OnMessage) -> DirectWebSocketProtocol:
        """Deliver data messages to ``on_message`` from now on; those uvicorn already holds
        for the app go to it when the app calls :meth:`deliver_held`, first and in order
        (once the app has what this returns: a refusal or a full link answered as they
        are delivered needs it)."""
        self._on_message = on_message
        return self

    def deliver_held(self) -> None:
        """The data messages uvicorn read for the app before :meth:`attach`, in order."""
        on_message: Any = self._on_message
        held = []
        while not self.queue.empty():
            held.append(self.queue.get_nowait())
        # uvicorn paused reading while it held a message for the app: taken now, unless
        # on_message pauses again.
        was_paused, self.read_paused = self.read_paused, False
        for message in held:
            if message["type"] != "websocket.receive":
                self.queue.put_nowait(message)
            elif (text := message.get("text")) is not None:
                on_message(text.encode(), True)
            else:
                on_message(message.get("bytes") or b"", False)
        if was_paused and not self.read_paused and not self.close_sent:
            self.transport.resume_reading()

    def detach(self) -> None:
        """Drop the data messages still to come (the session has ended)."""
        self._on_message = _drop

    def send_frame(self, payload: bytes, text: bool) -> None:
        """Write one text (``payload`` UTF-8) or binary frame; ``ClientDisconnected`` once
        the connection is closing."""
        self.write_frames(frame_header(len(payload), text=text) + payload)

    def write_frames(self, data: bytes) -> None:
        """Write whole frames, headers included, in one write; ``ClientDisconnected`` once
        the connection is closing."""
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(data)

    @property
    def writable_now(self) -> bool:
        return self.writable.is_set()

    async def drain(self) -> None:
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()

    def pause(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.read_paused and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()

    # -- uvicorn's side ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._on_message is None or self._busy():
            self._fed = True
            super().data_received(data)
            return
        taken = self._take_frames(data)
        if taken < len(data):
            self._fed = True
            super().data_received(data[taken:] if taken else data)

    def _busy(self) -> bool:
        """Whether websockets must parse what comes next: it is inside a frame (some of
        it buffered, or its header already taken), in a fragmented message, or the
        connection is past its open state."""
        conn = self.conn
        return (
            conn.current_size is not None
            or conn.state is not State.OPEN
            or self.close_sent
            or self._inside_frame()
        )

    def _inside_frame(self) -> bool:
        """Whether websockets' parser is inside a frame; looked at only after websockets
        was given bytes (its parser moves on nothing else)."""
        if self._fed:
            if not _between_frames(self.conn):
                return True
            self._fed = False
        return False

    def _take_frames(self, data: bytes) -> int:
        """Deliver the whole simple frames at the start of ``data``; the offset of the
        first byte left to websockets."""
        offset, end = 0, len(data)
        limit = self.conn.max_message_size
        while offset + 6 <= end and not self.close_sent:
            first, second = data[offset], data[offset + 1]
            if (first != _TEXT and first != _BINARY) or second < 0x80:
                break  # a control frame, a fragment, RSV bits, or an unmasked frame
            size, start = second & 0x7F, offset + 2
            if size == 126:
                if start + 2 > end:
                    break
                size, start = _U16.unpack_from(data, start)[0], start + 2
            elif size == 127:
                if start + 8 > end:
                    break
                size, start = _U64.unpack_from(data, start)[0], start + 8
            if (limit is not None and size > limit) or start + 4 + size > end:
                break
            payload = apply_mask(data[start + 4 : start + 4 + size], data[start : start + 4])
            offset = start + 4 + size
            self._deliver(payload, first == _TEXT)
        return offset

    def send_receive_event_to_app(self) -> None:
        """A message websockets parsed: to ``on_message`` in direct mode."""
        if self._on_message is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if not self.close_sent:
            self._deliver(bytes(data), self.curr_msg_data_type == "text")

    def _deliver(self, payload: bytes, text: bool) -> None:
        if text and not payload.isascii():
            try:
                payload.decode()
            except UnicodeDecodeError:
                # Past the open state (a close read with it) the closing handshake is under
                # way: no 1007 can be sent, and the message is dropped as it is.
                if self.conn.state is State.OPEN:
                    self.conn.send_close(1007)
                    self.handle_parser_exception()
                return
        on_message: Any = self._on_message
        on_message(payload, text)
