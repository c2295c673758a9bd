"""The link writes its batches on the carrier's transport with its own WebSocket frame
header (transceiver/link.py ``frame_header``, which the relay's frames to its clients use
too): what it writes must be what ``websockets`` reads, at every length encoding (7, 16 and
64 bits), text or binary, masked (the relay, a client, its keys drawn in bulk) or not.
And the carrier hands what it reads to the link as it parses it."""

from __future__ import annotations

import asyncio
import os

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import OP_BINARY, OP_TEXT, Frame
from websockets.streams import StreamReader

from tests.waiting import eventually
from transceiver.link import LinkServerConnection, MaskKeys, apply_mask, carrier_max_size
from transceiver.protocol.wsframe import frame_header


def parse(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=[])
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_a_carrier_frame_reads_back_whole(size: int) -> None:
    payload = os.urandom(size)
    pieces = [payload[: size // 3], payload[size // 3 :]]
    frame = parse(frame_header(size) + b"".join(pieces), mask=False)
    assert (frame.opcode, frame.fin, frame.data) == (OP_BINARY, True, payload)
    assert frame_header(size) + payload == Frame(OP_BINARY, payload).serialize(
        mask=False, extensions=[]
    )
    text = bytes(size)  # valid UTF-8
    assert frame_header(size, text=True) + text == Frame(OP_TEXT, text).serialize(
        mask=False, extensions=[]
    )
    key = os.urandom(4)
    masked = parse(frame_header(size, mask=key) + apply_mask(payload, key), mask=True)
    assert (masked.opcode, masked.fin, masked.data) == (OP_BINARY, True, payload)


async def test_a_direct_carrier_hands_over_what_it_held_then_each_message_as_parsed() -> None:
    """A link's carrier (``DirectCarrier``): binary messages read before the link attaches
    wait, in order, with reading paused past ``HOLD_BYTES``; after, each reaches the link
    as it is parsed, never through the queue; anything else still goes through the queue."""
    got: list[bytes] = []
    attach_now = asyncio.Event()
    queued: list[str | bytes] = []

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, LinkServerConnection)
        await eventually(lambda: connection.held_bytes >= connection.HOLD_BYTES, what="held")
        assert connection.held_bytes == 1_200_000  # two: reading paused before the third
        await attach_now.wait()
        assert connection.carries_link()
        connection.attach(got.append)
        queued.append(await connection.recv())  # only the text message comes this way

    big = [os.urandom(600_000) for _ in range(3)]  # 1.8 MB: past HOLD_BYTES
    small = [b"after-%d" % n for n in range(5)]
    size = carrier_max_size(1 << 20)
    async with serve(
        handler, "127.0.0.1", 0, create_connection=LinkServerConnection, max_size=size
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/v1/link", max_size=size) as client:
            for message in big:
                await client.send(message)
            await asyncio.sleep(0)
            attach_now.set()
            for message in small:
                await client.send(message)
            await client.send("a text message")
            await eventually(lambda: len(got) == 8 and queued, what="all the messages")
    assert got == big + small and queued == ["a text message"]


async def test_a_sessions_own_websocket_is_not_a_direct_carrier() -> None:
    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, LinkServerConnection)
        assert not connection.carries_link()
        await connection.send(await connection.recv())  # through the queue, as ever

    async with serve(handler, "127.0.0.1", 0, create_connection=LinkServerConnection) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/v1/sessions") as client:
            await client.send(b"echo")
            assert await asyncio.wait_for(client.recv(), 10) == b"echo"


def test_mask_keys_are_fresh_four_byte_keys() -> None:
    masks = MaskKeys()
    keys = [masks.next() for _ in range(3000)]  # past one 4 KiB draw
    assert {len(k) for k in keys} == {4} and len(set(keys)) > 2990
