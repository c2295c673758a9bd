"""Credentials from headers or browser subprotocols (PROTOCOL.md 2.4); never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def bearer_key(headers: Mapping[str, str], subprotocols: Iterable[str] = ()) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for proto in subprotocols:
        if proto.startswith(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL) :]
    return None


def key_allowed(key: str | None, allowed: Iterable[str]) -> bool:
    keys = list(allowed)
    if not keys:
        return True
    if key is None:
        return False
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def wants_beta(headers: Mapping[str, str], subprotocols: Iterable[str]) -> bool:
    return "realtime=v1" in headers.get("openai-beta", "").replace(" ", "") or (
        BETA_SUBPROTOCOL in subprotocols
    )


def error_body(message: str, code: str, type: str = "invalid_request_error") -> dict[str, object]:
    """The standard OpenAI JSON error envelope."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}
