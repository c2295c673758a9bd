"""``--webrtc-host-addresses`` (relay/ice.py): the addresses WebRTC gathers on, and the
caller's candidates they cannot reach dropped from its offer."""

from __future__ import annotations

import aioice.ice
import pytest
from pydantic import ValidationError

import relay.ice
from relay.ice import reachable_candidates, use_host_addresses
from relay.settings import RelaySettings

OFFER = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host",
        "a=candidate:2 1 udp 2130706431 127.0.0.1 50001 typ host",
        "a=candidate:3 1 udp 2130706431 fd00::2 50002 typ host",
        "a=candidate:4 1 udp 2130706431 ::1 50003 typ host",
        "a=candidate:5 1 udp 2130706431 4f1c8a2e-77d4.local 50004 typ host",
        "a=candidate:6 1 udp 1694498815 198.51.100.7 50005 typ srflx raddr 0.0.0.0 rport 0",
        "a=end-of-candidates",
        "",
    ]
)


def test_host_candidates_are_gathered_on_the_addresses_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    receive = aioice.ice.StunProtocol.datagram_received
    monkeypatch.setattr(aioice.ice.StunProtocol, "datagram_received", receive)
    use_host_addresses(["127.0.0.1", "::1", "192.0.2.2"])
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1", "192.0.2.2"]
    assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1", "192.0.2.2"]
    assert aioice.ice.get_host_addresses(False, True) == ["::1"]


async def test_loopback_only_takes_datagrams_from_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer on this machine may send from its network address to 127.0.0.1: not
    answered (the answer would leave loopback)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    receive = aioice.ice.StunProtocol.datagram_received
    monkeypatch.setattr(aioice.ice.StunProtocol, "datagram_received", receive)
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(relay.ice, "_RECEIVE", lambda protocol, data, addr: seen.append(addr))
    use_host_addresses(["127.0.0.1", "::1"])
    protocol = aioice.ice.StunProtocol(receiver=None)  # type: ignore[arg-type]
    for source in [("192.0.2.2", 5000), ("127.0.0.2", 5001), ("fd00::2", 5002), ("::1", 5003)]:
        protocol.datagram_received(b"", source)
    protocol.datagram_received(b"", ("fe80::1%eth0", 5004))
    assert seen == [("127.0.0.2", 5001), ("::1", 5003)]


def test_loopback_addresses_reach_loopback_candidates_only() -> None:
    kept = reachable_candidates(OFFER, ["127.0.0.1", "::1"])
    candidates = [line for line in kept.split("\r\n") if line.startswith("a=candidate:")]
    assert [line.split()[4] for line in candidates] == ["127.0.0.1", "::1"]
    assert kept.replace("\r\n", "\n").count("\n") == OFFER.count("\n") - 4
    assert "a=end-of-candidates" in kept and kept.endswith("\r\n")
    # Other addresses (or none given: aioice's own choice) take the offer as it is.
    assert reachable_candidates(OFFER, ["192.0.2.2"]) == OFFER
    assert reachable_candidates(OFFER, ["127.0.0.1", "192.0.2.2"]) == OFFER
    assert reachable_candidates(OFFER, []) == OFFER


def test_the_setting_takes_ip_addresses_only() -> None:
    settings = RelaySettings(webrtc_host_addresses="127.0.0.1,::1")  # type: ignore[arg-type]
    assert settings.webrtc_host_addresses == ["127.0.0.1", "::1"]
    with pytest.raises(ValidationError, match="not an IP address"):
        RelaySettings(webrtc_host_addresses=["eth0"])
    for address in ("0.0.0.0", "::", "224.0.0.251"):
        with pytest.raises(ValidationError, match="not an address of this machine"):
            RelaySettings(webrtc_host_addresses=[address])
