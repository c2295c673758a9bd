"""The link writes its batches on the carrier's transport with its own WebSocket frame
header (transceiver/link.py ``frame_header``, which the relay's frames to its clients use
too): what it writes must be what ``websockets`` reads, at every length encoding (7, 16 and
64 bits), text or binary, masked (the relay, a client) or not."""

from __future__ import annotations

import os

import pytest
from websockets.frames import OP_BINARY, OP_TEXT, Frame
from websockets.streams import StreamReader

from transceiver.link import apply_mask, frame_header


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
