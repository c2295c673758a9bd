"""RTP (RFC 3550) for a phone call: packets, G.711 (ITU-T G.711) and DTMF (RFC 4733).

The relay carries the session's PCM16 24 kHz (a media session, transceiver/protocol/
media.py); the phone carries G.711 at 8 kHz in 20 ms packets of 160 samples. The G.711
tables are computed here (the relay does not import :mod:`models`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
HEADER = struct.Struct("!BBHII")
DTMF_KEYS = "0123456789*#ABCD"  # RFC 4733 section 3.2: events 0-15


def _ulaw_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + 0x84) << exponent
    value = magnitude - 0x84
    return np.where(codes & 0x80, -value, value).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    value = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return np.where(codes & 0x80, value, -value).astype(np.int16)


def _encoder(decode: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """For each 16-bit sample (offset by 32768), the code whose value is nearest."""
    order = np.argsort(decode, kind="stable")
    values = decode[order].astype(np.int32)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    index = np.clip(np.searchsorted(values, samples), 1, len(values) - 1)
    nearer_low = (samples - values[index - 1]) <= (values[index] - samples)
    return order[np.where(nearer_low, index - 1, index)].astype(np.uint8)


class G711:
    """One G.711 law: ``PCMU`` (mu-law, payload type 0) or ``PCMA`` (A-law, 8)."""

    def __init__(self, codec: str) -> None:
        self._decode = _ulaw_table() if codec == "PCMU" else _alaw_table()
        self._encode = _encoder(self._decode)
        self.silence = bytes(self.encode(b"\0\0" * FRAME_SAMPLES))

    def decode(self, data: bytes) -> bytes:
        return self._decode[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()

    def encode(self, pcm16: bytes) -> bytes:
        samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2").astype(np.int32)
        return self._encode[samples + 32768].tobytes()


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def to_bytes(self) -> bytes:
        head = HEADER.pack(
            0x80,
            (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
            self.sequence & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        return head + self.payload


def parse_rtp(data: bytes) -> RtpPacket | None:
    """An RTP version 2 packet (CSRCs, extension and padding skipped); ``None`` if not."""
    if len(data) < HEADER.size:
        return None
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    offset = HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if first & 0x20 and end > offset:  # padding: the last byte counts it
        end -= data[-1]
    if end < offset:
        return None
    return RtpPacket(
        second & 0x7F, sequence, timestamp, ssrc, data[offset:end], bool(second & 0x80)
    )


class DtmfReceiver:
    """RFC 4733 telephone-events to key presses: one per event, however many packets
    (retransmitted end packets included) carry it. Section 2.5.1.3: an event is known by
    its RTP timestamp, the same in all its packets."""

    def __init__(self) -> None:
        self._last: int | None = None

    def receive(self, packet: RtpPacket) -> str | None:
        """The key of a new event, ``None`` for a packet of one already reported."""
        if len(packet.payload) < 4:
            return None
        event = packet.payload[0]
        if event >= len(DTMF_KEYS) or packet.timestamp == self._last:
            return None
        self._last = packet.timestamp
        return DTMF_KEYS[event]
