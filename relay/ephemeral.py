"""Ephemeral keys (``ek_...``): signed, so any relay sharing the secret accepts them.

A key carries its expiry and its session configuration; as the OpenAI API reference says of
``POST /v1/realtime/client_secrets`` ``expires_after``, "A secret can be used to create
multiple sessions until it expires"
(https://platform.openai.com/docs/api-reference/realtime-sessions). The relay keeps no state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transceiver.protocol.config import (
    SessionConfig,
    apply_session_update,
    default_config,
    session_wire,
)
from transceiver.protocol.contract import SessionKind
from transceiver.protocol.errors import ClientError, check_known_fields, shown_value

MIN_SECONDS, MAX_SECONDS, DEFAULT_SECONDS = 10, 7200, 600
# A key goes in one header (``Authorization: Bearer`` or the browser's subprotocol): at
# most the relay's header bound (``--client-max-header-bytes``) less this, for the request
# line and the other headers.
KEY_HEADER_ROOM = 2048
_EXPIRES_AFTER = frozenset({"anchor", "seconds"})


class InvalidKey(Exception):
    """The key is malformed, forged or expired."""


@dataclass(frozen=True)
class EphemeralKey:
    expires_at: int
    session: dict[str, Any]
    owner: str | None = None  # the minting API key's identity (KeyLimits.identity), not the key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeySigner:
    def __init__(self, secret: str | None) -> None:
        self._secret = (secret or secrets.token_hex(32)).encode()
        self.secret = self._secret

    def mint(
        self,
        session: dict[str, Any],
        seconds: int,
        now: float | None = None,
        owner: str | None = None,
        max_chars: int | None = None,
    ) -> str:
        """A key for ``session``; ``owner`` names the API key that minted it, so the keys it
        mints share its session limit. ``ClientError`` where the key would be longer than
        ``max_chars``."""
        expires_at = int((now if now is not None else time.time()) + seconds)
        claims: dict[str, Any] = {"exp": expires_at, "session": session}
        if owner is not None:
            claims["own"] = owner
        # Compressed: a key carries its whole session, and travels in one header.
        packed = zlib.compress(json.dumps(claims, separators=(",", ":")).encode(), 9)
        payload = _b64(packed)
        signature = _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())
        key = f"ek_{payload}.{signature}"
        if max_chars is not None and len(key) > max_chars:
            raise ClientError(
                f"This session makes a client secret of {len(key)} characters, and one may "
                f"have at most {max_chars} here: it travels in one header of the "
                "connection. Mint the key with less (long instructions or many tools) and "
                "send the rest in a session.update once connected.",
                code="session_too_large",
                param="session",
            )
        return key

    def verify(self, key: str, now: float | None = None) -> EphemeralKey:
        if not key.startswith("ek_") or "." not in key:
            raise InvalidKey("not an ephemeral key")
        payload, _, signature = key[3:].partition(".")
        expected = _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())
        # As bytes: compare_digest refuses str with non-ASCII (any byte a header may carry).
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise InvalidKey("unknown ephemeral key")
        try:
            packed = _unb64(payload)
            # Keys minted before they were compressed are JSON (``{``): still taken.
            data = json.loads(packed if packed.startswith(b"{") else zlib.decompress(packed))
        except (ValueError, zlib.error):
            raise InvalidKey("malformed ephemeral key") from None
        if int(data["exp"]) <= (now if now is not None else time.time()):
            raise InvalidKey("expired ephemeral key")
        owner = data.get("own")
        return EphemeralKey(
            int(data["exp"]), dict(data["session"]), owner if isinstance(owner, str) else None
        )


def _sign(secret: bytes, text: str) -> str:
    return _b64(hmac.new(secret, text.encode(), hashlib.sha256).digest())[:22]


def call_id_for(signer: KeySigner, owner_url: str) -> str:
    """A WebRTC call id that names the relay holding the call (signed, so it can be trusted):
    ``rtc_<random>.<owner>.<signature>``."""
    stem = secrets.token_hex(12)
    owner = _b64(owner_url.encode())
    return f"rtc_{stem}.{owner}.{_sign(signer.secret, stem + owner)}"


# Set on a request one relay forwards to the relay a call id names: that one forwards it no
# further (a stale id naming an alias of a relay would otherwise go round).
FORWARDED_HEADER = "x-realtime-relay-forwarded"


def forward_to(
    signer: KeySigner, call_id: str, own_url: str, headers: Mapping[str, str]
) -> str | None:
    """The relay to forward a request about ``call_id`` to: the one it names, if that is
    another and the request was not forwarded already (one hop at most); else ``None``."""
    owner = call_owner(signer, call_id)
    if owner is None or owner.rstrip("/") == own_url or FORWARDED_HEADER in headers:
        return None
    return owner


def call_owner(signer: KeySigner, call_id: str) -> str | None:
    """The URL of the relay holding ``call_id``, or ``None`` if it is not one of ours."""
    parts = call_id.removeprefix("rtc_").split(".")
    if not call_id.startswith("rtc_") or len(parts) != 3:
        return None
    stem, owner, signature = parts
    if not hmac.compare_digest(signature.encode(), _sign(signer.secret, stem + owner).encode()):
        return None
    try:
        return _unb64(owner).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None


def validate_session(session: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full session configuration from a client_secrets request (``ClientError`` if bad);
    with ``base`` (a full session: an ephemeral key's), ``session`` updates it as a
    ``session.update`` would: its type stays, its fields stay unless given."""
    if base is not None:
        return session_wire(apply_session_update(_config(base), session))
    return session_wire(_config(session))


def _config(session: Any) -> SessionConfig:
    if session is None:
        session = {"type": "realtime"}
    if not isinstance(session, dict):
        raise ClientError("'session' must be an object.", param="session")
    kind = session.get("type", "realtime")
    if kind not in ("realtime", "transcription"):
        raise ClientError(
            f"Invalid value: '{shown_value(kind)}'. "
            "Supported values are: 'realtime' and 'transcription'.",
            param="session.type",
        )
    default = default_config(SessionKind(kind), session.get("model"))
    return apply_session_update(default, session)


def expiry_seconds(
    body: dict[str, Any], default: int = DEFAULT_SECONDS, param: str = "expires_after"
) -> int:
    """``expires_after`` (GA body, or the beta ``client_secret``, whose ``param`` names its
    place) in seconds. Left out or null, the default; anything but an object is an error."""
    after = body.get("expires_after")
    if after is None:
        after = {}
    if not isinstance(after, dict):
        raise ClientError(f"'{param}' must be an object.", param=param)
    check_known_fields(after, _EXPIRES_AFTER, f"{param}.")
    if after.get("anchor", "created_at") != "created_at":
        raise ClientError("Invalid value: only 'created_at' is supported.", param=f"{param}.anchor")
    seconds = after.get("seconds", default)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not (MIN_SECONDS <= seconds <= MAX_SECONDS)
    ):
        raise ClientError(
            f"Invalid value: '{shown_value(seconds)}'. "
            f"Expected an integer from {MIN_SECONDS} to {MAX_SECONDS}.",
            param=f"{param}.seconds",
        )
    return seconds
