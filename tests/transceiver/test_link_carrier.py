"""The link writes its batches on the carrier's transport with its own WebSocket frame
header (transceiver/link.py ``carrier_header``): what it writes must be what ``websockets``
reads, at every length encoding (7, 16 and 64 bits), masked (the relay, a client) or not."""

from __future__ import annotations

import os

import pytest
from websockets.frames import OP_BINARY, Frame
from websockets.streams import StreamReader

from transceiver.link import apply_mask, carrier_header


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
    frame = parse(carrier_header(size) + b"".join(pieces), mask=False)
    assert (frame.opcode, frame.fin, frame.data) == (OP_BINARY, True, payload)
    assert carrier_header(size) + payload == Frame(OP_BINARY, payload).serialize(
        mask=False, extensions=[]
    )
    key = os.urandom(4)
    masked = parse(carrier_header(size, key) + apply_mask(payload, key), mask=True)
    assert (masked.opcode, masked.fin, masked.data) == (OP_BINARY, True, payload)
