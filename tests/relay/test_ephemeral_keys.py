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
