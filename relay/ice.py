"""Which local addresses WebRTC calls use (``--webrtc-host-addresses``).

aiortc gathers its host candidates through aioice, on every address of every interface
but loopback, and offers no setting for it. A relay on a machine with several networks
(a public and a private one, a VPN, Docker's bridges) may want calls on one of them only,
and one serving only this machine (``127.0.0.1``) must be reachable where aioice would
never look. :func:`use_host_addresses` replaces aioice's choice for the process (the
setting is the process's: an app created later with addresses replaces them, one
created without leaves them); with loopback addresses only, :func:`reachable_candidates`
drops the caller's candidates elsewhere and datagrams from elsewhere are dropped, so
that no connectivity check or media goes anywhere but loopback.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

import aioice.ice

_RECEIVE = aioice.ice.StunProtocol.datagram_received


def host_address(text: str) -> str:
    """``text`` as an address host candidates can be gathered on; ``ValueError`` if it is
    no IP address, or one no interface has (unspecified, multicast)."""
    try:
        address = ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text!r} is not an address of this machine's")
    return str(address)


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Gather host candidates on ``addresses`` only (IPv4 and IPv6 as aioice asks);
    ``ValueError`` (:func:`host_address`) for one that cannot be. When they are all
    loopback addresses, datagrams from any other source are dropped too: a peer on this
    machine may send from its own network address to 127.0.0.1, and an answer to that
    address would leave loopback."""
    pinned = [(address, ip_address(address).version) for address in map(host_address, addresses)]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        wanted = {4: use_ipv4, 6: use_ipv6}
        return [address for address, version in pinned if wanted[version]]

    aioice.ice.get_host_addresses = host_addresses
    receive = _from_loopback if _loopback_only(addresses) else _RECEIVE
    aioice.ice.StunProtocol.datagram_received = receive  # type: ignore[method-assign,assignment]


def _loopback_only(addresses: Sequence[str]) -> bool:
    return bool(addresses) and all(ip_address(address).is_loopback for address in addresses)


def _from_loopback(
    protocol: aioice.ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]
) -> None:
    try:
        if not ip_address(addr[0]).is_loopback:
            return
    except ValueError:
        return
    _RECEIVE(protocol, data, addr)


def reachable_candidates(sdp: str, addresses: Sequence[str]) -> str:
    """``sdp`` without the ``a=candidate`` lines that ``addresses`` cannot reach: when
    every one of them is a loopback address, the candidates that are not (an mDNS name
    included). Anything else is left as it is."""
    if not _loopback_only(addresses):
        return sdp
    kept = [line for line in sdp.split("\n") if not _elsewhere(line.rstrip("\r"))]
    return "\n".join(kept)


def _elsewhere(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return False
    fields = line.split(" ")
    if len(fields) < 5:
        return False  # not a candidate aiortc can use either: its parser decides
    try:
        return not ip_address(fields[4]).is_loopback
    except ValueError:
        return True  # a name (mDNS): not a loopback address
