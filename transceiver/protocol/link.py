"""The relay <-> transceiver link's frames: many sessions over one connection.

A relay keeps one link per transceiver (``/v1/link``, transceiver/link.py) instead of one
WebSocket per session. Every message on the link is a batch of frames, each::

    payload length (u32, big-endian) | kind (u8) | session id (u32) | payload

Kinds: ``OPEN`` (relay -> transceiver: the session's ``session.open`` spec,
transceiver/protocol/contract.py), ``ACCEPTED`` and ``REFUSED`` (the answer: an HTTP-like
status and a reason), ``TEXT`` and ``BINARY`` (one client or server frame, byte for byte),
``CLOSE`` (a close code and reason, RFC 6455's codes: either side, echoed by the other) and
``CREDIT`` (bytes the receiver has consumed: the sender may send that many more, so a
session that stops reading holds at most its window, never the whole link).

Pure: bytes in, frames out. A malformed batch raises :class:`LinkError`; the shell closes the
link and logs why.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IBI")
_CODE = struct.Struct(">H")
_COUNT = struct.Struct(">I")
# Room for a close's or a refusal's reason on top of the largest frame.
CONTROL_BYTES = 1024


class Kind(enum.IntEnum):
    OPEN = 1
    ACCEPTED = 2
    REFUSED = 3
    TEXT = 4
    BINARY = 5
    CLOSE = 6
    CREDIT = 7


# A header's kind byte to its member: a dict lookup where ``Kind(kind)`` is an enum call.
_KINDS = {int(k): k for k in Kind}
_CONTROL = frozenset((Kind.ACCEPTED, Kind.REFUSED, Kind.CLOSE, Kind.CREDIT))


class LinkError(ValueError):
    """A batch that is not valid link frames: the link is closed."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much
class Frame:
    kind: Kind
    session: int
    payload: bytes


def header(kind: Kind, session: int, size: int) -> bytes:
    """A frame's header; the ``size`` bytes of payload follow it."""
    return HEADER.pack(size, kind, session)


def encode(kind: Kind, session: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, session) + payload


def encode_close(session: int, code: int, reason: str) -> bytes:
    return encode(Kind.CLOSE, session, _CODE.pack(code) + _reason(reason))


def encode_refused(session: int, status: int, reason: str) -> bytes:
    return encode(Kind.REFUSED, session, _CODE.pack(status) + _reason(reason))


def encode_credit(session: int, size: int) -> bytes:
    return encode(Kind.CREDIT, session, _COUNT.pack(size))


def _reason(reason: str) -> bytes:
    data = reason.encode()
    # Cut at a character boundary: RFC 6455 allows 123 bytes of reason.
    return data[:123].decode(errors="ignore").encode()


def decode_code(frame: Frame) -> tuple[int, str]:
    """A ``CLOSE`` frame's code and reason, or a ``REFUSED`` frame's status and reason."""
    if len(frame.payload) < _CODE.size:
        raise LinkError(f"a {frame.kind.name} frame without its code")
    (code,) = _CODE.unpack_from(frame.payload)
    try:
        reason = frame.payload[_CODE.size :].decode()
    except UnicodeDecodeError as exc:
        raise LinkError(f"a {frame.kind.name} frame's reason is not UTF-8") from exc
    return code, reason


def decode_credit(frame: Frame) -> int:
    if len(frame.payload) != _COUNT.size:
        raise LinkError("a CREDIT frame must carry 4 bytes")
    return int(_COUNT.unpack(frame.payload)[0])


def decode_text(frame: Frame) -> str:
    try:
        return frame.payload.decode()
    except UnicodeDecodeError as exc:
        raise LinkError("a TEXT frame is not UTF-8") from exc


def parse(batch: bytes, max_payload_bytes: int) -> list[Frame]:
    """Every frame in ``batch``, in order. :class:`LinkError` when a header is cut, a kind
    is unknown, a payload runs past the batch or past ``max_payload_bytes`` (control
    frames: past :data:`CONTROL_BYTES`)."""
    frames: list[Frame] = []
    view = memoryview(batch)
    offset, end = 0, len(batch)
    while offset < end:
        if end - offset < HEADER.size:
            raise LinkError(f"a frame header cut short ({end - offset} bytes)")
        size, number, session = HEADER.unpack_from(view, offset)
        kind = _KINDS.get(number)
        if kind is None:
            raise LinkError(f"unknown frame kind {number}")
        limit = CONTROL_BYTES if kind in _CONTROL else max_payload_bytes
        if size > limit:
            raise LinkError(f"a {kind.name} frame of {size} bytes (at most {limit})")
        offset += HEADER.size
        if offset + size > end:
            raise LinkError(f"a {kind.name} frame runs past its batch")
        frames.append(Frame(kind, session, bytes(view[offset : offset + size])))
        offset += size
    return frames
