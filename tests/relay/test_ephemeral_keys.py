"""Signed ephemeral keys: expiry, forgery, shared secrets."""

from __future__ import annotations

import pytest

from relay.ephemeral import InvalidKey, KeySigner

SESSION = {"type": "realtime", "model": "gpt-realtime"}


def test_key_expires() -> None:
    signer = KeySigner("secret")
    key = signer.mint(SESSION, 60, now=1000.0)
    assert signer.verify(key, now=1059.0).session == SESSION
    with pytest.raises(InvalidKey, match="expired"):
        signer.verify(key, now=1060.0)


def test_relays_sharing_a_secret_accept_each_others_keys() -> None:
    key = KeySigner("shared").mint(SESSION, 60)
    assert KeySigner("shared").verify(key).session == SESSION
    with pytest.raises(InvalidKey, match="unknown"):
        KeySigner("other").verify(key)


@pytest.mark.parametrize("bad", ["sk-plain", "ek_", "ek_abc", "ek_!!!.sig"])
def test_malformed_keys(bad: str) -> None:
    with pytest.raises(InvalidKey):
        KeySigner("secret").verify(bad)


def test_advertised_address_replaces_host_candidates() -> None:
    from relay.calls import advertise

    sdp = (
        "v=0\r\nc=IN IP4 10.0.0.5\r\n"
        "a=candidate:1 1 UDP 2130706431 10.0.0.5 40000 typ host\r\n"
        "a=candidate:2 1 UDP 1694498815 198.51.100.9 40000 typ srflx raddr 10.0.0.5\r\n"
    )
    out = advertise(sdp, "203.0.113.7")
    assert "a=candidate:1 1 UDP 2130706431 203.0.113.7 40000 typ host" in out
    assert "198.51.100.9 40000 typ srflx" in out and "c=IN IP4 203.0.113.7" in out
    assert advertise(sdp, None) == sdp


def test_keys_minted_before_compression_still_verify() -> None:
    """Keys of relays not yet upgraded (JSON, uncompressed) verify on upgraded ones."""
    import base64
    import hashlib
    import hmac
    import json
    import time

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"exp": int(time.time()) + 60, "session": {"type": "realtime"}}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(b"shared", payload.encode(), hashlib.sha256).digest())
    key = f"ek_{payload}.{signature}"
    assert KeySigner("shared").verify(key).session == {"type": "realtime"}
