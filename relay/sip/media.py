"""A call's RTP socket: one UDP port from ``--sip-rtp-ports``, symmetric RTP.

Packets go to the address the caller's SDP names until the caller's own packets arrive;
then to the address they come from (symmetric RTP, RFC 4961), which is what reaches a
caller behind a NAT. That source is learnt once, from the first packet of a negotiated
payload type: from then on packets from anywhere but it and the SDP's address are dropped
(counted in ``strangers``), so that one packet from whoever finds the port cannot take
the call's audio; packets go to whichever of the two spoke last. A re-INVITE that moves
the media (:meth:`RtpStream.move`) learns again. Each packet taken goes to ``on_packet``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
from collections.abc import Callable
from ipaddress import ip_address
from typing import cast

from relay.sip.rtp import FRAME_SAMPLES, RtpPacket, parse_rtp

log = logging.getLogger(__name__)


class NoRtpPort(Exception):
    """Every port of ``--sip-rtp-ports`` is taken."""


class RtpStream(asyncio.DatagramProtocol):
    def __init__(
        self,
        remote: tuple[str, int],
        payload_type: int,
        on_packet: Callable[[RtpPacket], None],
        dtmf_payload_type: int | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.on_packet = on_packet
        self._types = {payload_type, dtmf_payload_type} - {None}
        self.strangers = 0  # packets dropped for coming from elsewhere
        self._learnt: tuple[str, int] | None = None
        self.remote = self.offered = _as_source(remote)
        self.ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._first = True
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        if packet is None or packet.payload_type not in self._types:
            return
        source = (addr[0], addr[1])
        if self._learnt is None:
            self._learnt = source
        elif source != self._learnt and source != self.offered:
            self.strangers += 1
            return
        self.remote = source
        self.on_packet(packet)

    def move(self, remote: tuple[str, int]) -> None:
        """The caller's media is at ``remote`` now (its SDP's): its source is learnt again.
        The same address again (a session refresh) changes nothing, nor does an
        unspecified one (``0.0.0.0``: a hold, RFC 3264 section 8.4)."""
        moved = _as_source(remote)
        if moved != self.offered and moved[0] not in _NOWHERE:
            self.remote = self.offered = moved
            self._learnt = None

    def send(self, payload: bytes) -> None:
        """One 20 ms frame of G.711."""
        transport = self._transport
        if transport is None or transport.is_closing() or self.remote[0] in _NOWHERE:
            return  # (an offer of 0.0.0.0: until the caller's own packets come)
        packet = RtpPacket(
            self.payload_type, self._sequence, self._timestamp, self.ssrc, payload, self._first
        )
        self._first = False
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        try:
            transport.sendto(packet.to_bytes(), self.remote)
        except (OSError, ValueError) as exc:  # unreachable: the RTP timeout ends the call
            log.debug("rtp: send to %s failed: %r", self.remote, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_NOWHERE = ("0.0.0.0", "::", "::ffff:0.0.0.0")  # unspecified, as inet_ntop writes them


def _as_source(remote: tuple[str, int]) -> tuple[str, int]:
    """``remote`` as the kernel writes a packet's source (IPv6 forms vary)."""
    family = socket.AF_INET6 if ip_address(remote[0]).version == 6 else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, remote[0])), remote[1]


def parse_ports(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (inclusive); ``ValueError`` if not a range of UDP ports."""
    low, sep, high = text.partition("-")
    first, last = int(low), int(high if sep else low)
    if not (1024 <= first <= last <= 65535):
        raise ValueError(f"{text!r} is not a port range LOW-HIGH within 1024-65535")
    return first, last


async def open_rtp(host: str, ports: tuple[int, int] | None, stream: RtpStream) -> None:
    """Bind ``stream`` to a free port of ``ports`` (any free port if ``None``)."""
    loop = asyncio.get_running_loop()
    if ports is None:
        await loop.create_datagram_endpoint(lambda: stream, local_addr=(host, 0))
        return
    first, last = ports
    candidates = list(range(first - first % 2, last + 1, 2)) or [first]  # RTP takes even ports
    start = random.randrange(len(candidates))
    for port in candidates[start:] + candidates[:start]:
        if port < first:
            continue
        try:
            await loop.create_datagram_endpoint(lambda: stream, local_addr=(host, port))
            return
        except OSError:
            continue
    raise NoRtpPort(f"no free RTP port in {first}-{last}")


def local_address_towards(remote_host: str, listen_host: str) -> str:
    """The address to put in SDP: the listen address, or (listening on all) the local
    address the system routes ``remote_host`` from."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return listen_host
    family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote_host, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"
