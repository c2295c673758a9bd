"""The header of a WebSocket data frame (RFC 6455, section 5.2), built by hand where a frame
is written without ``websockets``' ``send``: the link's carrier messages
(transceiver/link.py), the relay's frames to its clients (relay/direct.py) and the load
generator's audio frames (loadgen/client.py). Pure: no I/O."""

from __future__ import annotations

import struct


def frame_header(size: int, *, text: bool = False, mask: bytes = b"") -> bytes:
    """The header of a final, unfragmented text or binary frame of ``size`` bytes, with its
    4-byte masking key when it has one (a client's frames are masked, a server's are not)."""
    first = 0x81 if text else 0x82
    masked = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, masked | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, masked | 126, size)
    else:
        head = struct.pack("!BBQ", first, masked | 127, size)
    return head + mask
