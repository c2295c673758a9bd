"""The link's frames (transceiver/protocol/link.py): what is encoded parses back the same,
in any batch; anything else is a :class:`LinkError`, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transceiver.protocol import link as frames
from transceiver.protocol.link import Frame, Kind, LinkError

MAX = 1 << 16


def test_every_kind_round_trips_in_one_batch() -> None:
    batch = b"".join(
        [
            frames.encode(Kind.OPEN, 1, b'{"type":"session.open","v":1}'),
            frames.encode(Kind.ACCEPTED, 1),
            frames.encode_refused(2, 503, "full"),
            frames.encode(Kind.TEXT, 1, "é{not json".encode()),
            frames.header(Kind.BINARY, 4294967295, 3) + b"\x00\xff\x01",
            frames.encode_close(1, 1011, "transceiver failed"),
            frames.encode_credit(1, 65536),
        ]
    )
    parsed = frames.parse(batch, MAX)
    assert [f.kind for f in parsed] == list(Kind)
    assert frames.decode_text(parsed[3]) == "é{not json"
    assert parsed[4] == Frame(Kind.BINARY, 4294967295, b"\x00\xff\x01")
    assert frames.decode_code(parsed[2]) == (503, "full")
    assert frames.decode_code(parsed[5]) == (1011, "transceiver failed")
    assert frames.decode_credit(parsed[6]) == 65536


def test_a_long_reason_is_cut_at_a_character() -> None:
    (frame,) = frames.parse(frames.encode_close(1, 1000, "é" * 100), MAX)
    code, reason = frames.decode_code(frame)
    assert code == 1000 and reason == "é" * 61 and len(reason.encode()) <= 123


@pytest.mark.parametrize(
    ("batch", "said"),
    [
        (b"\x00\x00", "cut short"),
        (frames.header(Kind.TEXT, 1, MAX + 1), "at most"),
        (frames.header(Kind.CREDIT, 1, frames.CONTROL_BYTES + 1), "at most"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x00\x01", "unknown frame kind 0"),
        (frames.header(Kind.BINARY, 1, 4) + b"abc", "runs past"),
    ],
)
def test_malformed_batches_are_refused(batch: bytes, said: str) -> None:
    with pytest.raises(LinkError, match=said):
        frames.parse(batch, MAX)


@pytest.mark.parametrize(
    "frame",
    [
        Frame(Kind.TEXT, 1, b"\xff"),
        Frame(Kind.CLOSE, 1, b"\x03"),
        Frame(Kind.CLOSE, 1, b"\x03\xe8\xff"),
        Frame(Kind.CREDIT, 1, b"\x00"),
    ],
)
def test_malformed_payloads_are_refused(frame: Frame) -> None:
    with pytest.raises(LinkError):
        if frame.kind is Kind.TEXT:
            frames.decode_text(frame)
        elif frame.kind is Kind.CLOSE:
            frames.decode_code(frame)
        else:
            frames.decode_credit(frame)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_link_error(batch: bytes) -> None:
    try:
        parsed = frames.parse(batch, 64)
    except LinkError:
        return
    assert b"".join(frames.encode(f.kind, f.session, f.payload) for f in parsed) == batch


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Kind)),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=100),
        ),
        max_size=20,
    )
)
def test_any_frames_round_trip(items: list[tuple[Kind, int, bytes]]) -> None:
    batch = b"".join(frames.encode(kind, session, payload) for kind, session, payload in items)
    assert frames.parse(batch, MAX) == [Frame(*item) for item in items]
