"""The client edge's direct frame path (relay/direct.py, relay/forward.py): a raw TCP client
on 127.0.0.1 speaks WebSocket through websockets' sans-I/O client, to the relay in this
process (its own protocols), in front of a fake transceiver that echoes over the link.

Frames cut anywhere across reads, of every size and kind, with pings and a fragmented
message among them, come back whole and in order; invalid UTF-8 fails the connection with
1007 and an oversized frame with 1009, as before; a transceiver that stops reading holds the
client's frames (reading stops) and loses none."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

import relay.direct
import relay.forward
from tests.relay.inprocess import HOST, fake_transceiver, running_relay
from tests.waiting import eventually
from transceiver.link import apply_mask

pytestmark = pytest.mark.asyncio(loop_scope="session")


class RawClient:
    """A WebSocket client whose bytes the test cuts as it likes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(parse_uri(f"ws://{HOST}/v1/realtime"), max_size=None)
        self.frames: list[Frame] = []
        self.pongs = 0

    async def handshake(self, port: int) -> None:
        request = self.protocol.connect()
        request.headers["Host"] = f"{HOST}:{port}"
        self.protocol.send_request(request)
        await self.flush()
        while self.protocol.state is not State.OPEN:
            await self.read()
        assert self.protocol.handshake_exc is None

    async def flush(self, cut: random.Random | None = None) -> None:
        """Write what the protocol has to send; with ``cut``, in pieces of 1-3000 bytes."""
        data = b"".join(self.protocol.data_to_send())
        while data:
            size = cut.randint(1, 3000) if cut is not None else len(data)
            self.writer.write(data[:size])
            await self.writer.drain()
            data = data[size:]

    async def read(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), 10)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
                self.pongs += event.opcode is Opcode.PONG

    async def messages(self, count: int) -> list[tuple[Opcode, bytes]]:
        """The next ``count`` data messages (text or binary; no fragments are sent to us)."""
        while len(self._data()) < count:
            if self.protocol.state is State.CLOSED:
                code = self.protocol.close_rcvd.code if self.protocol.close_rcvd else None
                raise AssertionError(f"closed ({code}) with {self._data()} of {count} messages")
            await self.read()
        at = self._data_at()[:count]
        data = [self.frames[i] for i in at]
        self.frames = self.frames[at[-1] + 1 :]  # by position: equal frames may repeat
        return [(frame.opcode, bytes(frame.data)) for frame in data]

    def _data_at(self) -> list[int]:
        return [i for i, f in enumerate(self.frames) if f.opcode in (Opcode.TEXT, Opcode.BINARY)]

    def _data(self) -> list[Frame]:
        return [self.frames[i] for i in self._data_at()]

    async def close_code(self) -> int | None:
        """Read until the server closes; its close code."""
        while self.protocol.close_rcvd is None and self.protocol.state is not State.CLOSED:
            await self.read()
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd else None


@asynccontextmanager
async def client(**settings: Any) -> AsyncIterator[RawClient]:
    async with fake_transceiver() as fake, running_relay([fake], **settings) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        raw = RawClient(reader, writer)
        await raw.handshake(relay.port)
        (created,) = await raw.messages(1)
        assert json.loads(created[1])["type"] == "session.created"
        try:
            yield raw
        finally:
            writer.close()


def text(size: int, char: str = "a") -> bytes:
    body = json.dumps({"type": "test.echo", "pad": char * max(0, size - 30)})
    return body.encode()


async def test_frames_cut_anywhere_come_back_whole_and_in_order() -> None:
    sizes = [0, 1, 100, 125, 126, 127, 1000, 65535, 65536, 70_000, 300_000]
    messages: list[tuple[Opcode, bytes]] = []
    for size in sizes:
        messages.append((Opcode.TEXT, text(size)))
        messages.append((Opcode.BINARY, os.urandom(size)))
    messages.append((Opcode.TEXT, text(500, "é")))  # UTF-8 beyond ASCII
    cut = random.Random(16)
    async with client() as raw:
        for round_ in range(3):  # whole at first (parsed here), then cut differently
            for opcode, payload in messages:
                if opcode is Opcode.TEXT:
                    raw.protocol.send_text(payload)
                else:
                    raw.protocol.send_binary(payload)
                if cut.random() < 0.2:  # a ping among the frames: answered, not echoed
                    raw.protocol.send_ping(b"p%d" % round_)
            # A fragmented message: websockets' parser takes it, in the same order.
            raw.protocol.send_text(b'{"type":"test.echo","part":', fin=False)
            raw.protocol.send_continuation(b'"two"}', fin=True)
            await raw.flush(cut if round_ else None)
            expected = [*messages, (Opcode.TEXT, b'{"type":"test.echo","part":"two"}')]
            assert await raw.messages(len(expected)) == expected
        assert raw.pongs > 0


def masked_text(payload: bytes, mask: bytes) -> bytes:
    """A client text frame with the ``mask`` chosen (FIN, masked; 7- or 16-bit length)."""
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return b"\x81" + length + mask + apply_mask(payload, mask)


ECHO = b'{"type":"test.echo","n":1}'
# Each frame is cut where the bytes that follow look like a simple frame's header
# (0x81, then a masked length): a header, an extended length or a mask already taken by
# websockets' parser, the rest read by this path as a new frame, lost the real one.
CUT_AFTER_HEADER = masked_text(ECHO, b"\x81\x85AB"), 2
CUT_AFTER_LENGTH = masked_text(text(200), b"\x81\x85AB"), 4
CUT_AFTER_MASK = masked_text(ECHO, bytes([0x7B ^ 0x81, 0x22 ^ 0x85, 0, 0])), 6


@pytest.mark.parametrize(
    ("frame", "cut"),
    [CUT_AFTER_HEADER, CUT_AFTER_LENGTH, CUT_AFTER_MASK],
    ids=["after-header", "after-length", "after-mask"],
)
async def test_a_frame_cut_inside_its_header_is_not_read_from_the_middle(
    frame: bytes, cut: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    data_received = relay.direct.DirectWebSocketProtocol.data_received

    def counted(self: relay.direct.DirectWebSocketProtocol, data: bytes) -> None:
        nonlocal reads
        reads += 1
        data_received(self, data)

    taken = 0
    take_frames = relay.direct.DirectWebSocketProtocol._take_frames

    def taking(self: relay.direct.DirectWebSocketProtocol, data: bytes) -> int:
        nonlocal taken
        offset = take_frames(self, data)
        taken += offset > 0
        return offset

    monkeypatch.setattr(relay.direct.DirectWebSocketProtocol, "data_received", counted)
    monkeypatch.setattr(relay.direct.DirectWebSocketProtocol, "_take_frames", taking)
    async with client() as raw:
        before = reads
        raw.writer.write(frame[:cut])
        await raw.writer.drain()
        await eventually(lambda: reads > before, what="the relay read the first part")
        raw.writer.write(frame[cut:])
        raw.protocol.send_text(ECHO)  # and a whole frame after it
        await raw.flush()
        expected = json.loads(text(200)) if cut == 4 else json.loads(ECHO)
        got = await raw.messages(2)
        assert [json.loads(data) for _, data in got] == [expected, json.loads(ECHO)]
        # Once websockets has the frame whole, this path takes the next ones again.
        taken = 0
        raw.protocol.send_text(ECHO)
        await raw.flush()
        assert await raw.messages(1) == [(Opcode.TEXT, ECHO)]
        assert taken == 1


async def test_invalid_utf8_fails_the_connection_with_1007() -> None:
    async with client() as raw:
        raw.protocol.send_text(b'{"type":"test.echo","bad":"\xff\xfe"}')
        await raw.flush()
        assert await raw.close_code() == 1007


async def test_invalid_utf8_in_the_read_that_closes_ends_with_the_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ping, an invalid text frame and a close in one read: websockets parses them all
    (the ping makes this path step aside), so the connection is closing when the bad text
    comes to be checked; no 1007 can be sent then, and none is tried: the close goes on."""
    async with client() as raw:
        raw.protocol.send_ping(b"p")
        raw.protocol.send_text(b'{"type":"test.echo","bad":"\xff"}')
        raw.protocol.send_close(1000)
        await raw.flush()
        assert await raw.close_code() == 1000
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]


async def test_a_frame_over_the_limit_fails_the_connection_with_1009() -> None:
    async with client(max_frame_bytes=4096) as raw:
        raw.protocol.send_text(text(1000))
        await raw.flush()
        assert (await raw.messages(1))[0][1] == text(1000)
        raw.protocol.send_binary(b"x" * 5000)
        await raw.flush()
        assert await raw.close_code() == 1009


async def test_a_transceiver_that_stops_reading_holds_the_frames_and_loses_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the link's window (1 MiB a session), the relay stops reading the client until
    the transceiver reads again; every frame then arrives, in order."""
    flushes = 0
    flush = relay.forward.DirectSession._flush

    async def counted(self: relay.forward.DirectSession) -> None:
        nonlocal flushes
        flushes += 1
        await flush(self)

    monkeypatch.setattr(relay.forward.DirectSession, "_flush", counted)
    chunks = [os.urandom(100_000) for _ in range(30)]  # 3 MB: three windows
    async with client() as raw:
        raw.protocol.send_text(b'{"type":"test.pause","ms":1500}')
        for chunk in chunks:
            raw.protocol.send_binary(chunk)
        await raw.flush()
        echoed = await raw.messages(1 + len(chunks))
        assert echoed[0] == (Opcode.TEXT, b'{"type":"test.pause","ms":1500}')
        assert [payload for _, payload in echoed[1:]] == chunks
    assert flushes >= 1  # the window filled: frames were held, then sent


def burst(n: int, pad: int = 0, done_at: int | None = None) -> bytes:
    return json.dumps({"type": "test.burst", "n": n, "pad": pad, "done_at": done_at}).encode()


async def test_a_burst_of_server_frames_leaves_in_order_in_one_write_or_few(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames the transceiver sends together (a reply's events) reach the client as one
    write, not one each, and in order."""
    writes = 0
    write = relay.direct.DirectWebSocketProtocol.write_frames

    def counted(self: relay.direct.DirectWebSocketProtocol, data: bytes) -> None:
        nonlocal writes
        writes += 1
        write(self, data)

    monkeypatch.setattr(relay.direct.DirectWebSocketProtocol, "write_frames", counted)
    async with client() as raw:
        writes = 0
        raw.protocol.send_text(burst(50))
        await raw.flush()
        got = [json.loads(payload) for _, payload in await raw.messages(50)]
        assert [event["seq"] for event in got] == list(range(50))
        assert writes <= 3, writes  # one link message (or a few reads of it): 50 before


async def test_server_frames_stay_in_order_when_the_client_stops_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that reads nothing for a while fills its transport: the transceiver's frames
    then wait in the session's inbox, and are taken as they come again once it drains.
    Every frame arrives in order, the relay's ``rate_limits.updated`` right after the
    ``response.done`` among them."""
    taken = {True: 0, False: 0}
    take = relay.forward.DirectSession.take

    def counted(self: relay.forward.DirectSession, payload: bytes, text: bool) -> bool:
        result = take(self, payload, text)
        taken[result] += 1
        return result

    monkeypatch.setattr(relay.forward.DirectSession, "take", counted)
    count, done_at = 400, 250
    async with client() as raw:
        raw.protocol.send_text(burst(count, pad=20_000, done_at=done_at))  # 8 MB
        await raw.flush()
        # Reading nothing until the relay has had to hold frames back.
        await eventually(lambda: taken[False] > 0, what="a full client transport")
        got = [json.loads(payload) for _, payload in await raw.messages(count + 1)]
    types = [event["type"] for event in got]
    assert types.index("rate_limits.updated") == done_at + 1
    assert types[done_at] == "response.done"
    del got[done_at + 1]
    assert [event["seq"] for event in got] == list(range(count))
    assert taken[True] > 0 and taken[False] > 0, taken  # both ways were taken
