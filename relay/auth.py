"""Who is calling: credentials from headers or browser subprotocols; keys are never logged.

A key comes as ``Authorization: Bearer KEY`` or, from browsers that cannot set headers on
a WebSocket, as the subprotocol ``openai-insecure-api-key.KEY`` (the OpenAI Realtime
WebSocket guide, https://platform.openai.com/docs/guides/realtime-websocket). A key is an
API key (``--api-keys``; none configured: any key, or none, is accepted) or an ephemeral
key (``ek_...``, see :mod:`relay.ephemeral`), which is verified whatever the API keys.

HTTP routes take :class:`Credentials` through the dependencies below, which answer 401 with
the JSON error envelope. A WebSocket route calls :func:`authenticate` itself and sends the
error as the handshake's denial response.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from relay.edge import Edge, EdgeDep, KeyLimits
from relay.ephemeral import EphemeralKey, InvalidKey
from relay.errors import error_body, unauthorized

__all__ = [
    "ApiKeyAuth",
    "ClientAuth",
    "Credentials",
    "MintingAuth",
    "authenticate",
    "bearer_key",
    "error_body",
    "key_allowed",
    "lower_headers",
    "wants_beta",
]

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
    # Digests of equal length, and every key compared: the time taken says neither the
    # key's length nor which key matched.
    given = hashlib.sha256(key.encode()).digest()
    matched = False
    for allowed_key in keys:
        matched |= hmac.compare_digest(given, hashlib.sha256(allowed_key.encode()).digest())
    return matched


def wants_beta(headers: Mapping[str, str], subprotocols: Iterable[str]) -> bool:
    return "realtime=v1" in headers.get("openai-beta", "").replace(" ", "") or (
        BETA_SUBPROTOCOL in subprotocols
    )


@dataclass(frozen=True)
class Credentials:
    """An accepted caller."""

    key: str | None = field(repr=False)  # as presented; never logged
    ephemeral: EphemeralKey | None  # the verified ephemeral key, when ``key`` is one
    holder: str  # whose per-key session limit this caller counts against

    @property
    def is_ephemeral(self) -> bool:
        return self.key is not None and self.key.startswith("ek_")


def authenticate(
    edge: Edge,
    headers: Mapping[str, str],
    subprotocols: Iterable[str] = (),
    *,
    ephemeral: bool = True,
) -> Credentials:
    """The caller's credentials, or :class:`~relay.errors.ApiError` 401.

    ``headers`` have lower-case names. With ``ephemeral``, an ``ek_`` key must be one this
    relay (or one sharing its secret) signed, and unexpired; without it, every key is held
    to the API keys, so an ``ek_`` key passes only where no API key is required.
    """
    key = bearer_key(headers, subprotocols)
    if ephemeral and key is not None and key.startswith("ek_"):
        try:
            verified = edge.signer.verify(key)
        except InvalidKey as exc:
            raise unauthorized(f"Ephemeral key: {exc}.") from None
        return Credentials(key, verified, KeyLimits.holder_of(key, verified))
    if not key_allowed(key, edge.settings.api_keys):
        raise unauthorized()
    return Credentials(key, None, KeyLimits.identity(key))


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def client_credentials(request: Request, edge: EdgeDep) -> Credentials:
    """An ephemeral key, else an API key: what starts sessions and calls."""
    return authenticate(edge, lower_headers(request.headers))


async def api_key_credentials(request: Request, edge: EdgeDep) -> Credentials:
    """An API key only (hangup): ephemeral keys are not verified as such."""
    return authenticate(edge, lower_headers(request.headers), ephemeral=False)


async def minting_credentials(
    credentials: Annotated[Credentials, Depends(api_key_credentials)],
) -> Credentials:
    """An API key that may mint ephemeral keys: an ephemeral key cannot mint more keys, even
    where no API key is required."""
    if credentials.is_ephemeral:
        raise unauthorized()
    return credentials


ClientAuth = Annotated[Credentials, Depends(client_credentials)]
ApiKeyAuth = Annotated[Credentials, Depends(api_key_credentials)]
MintingAuth = Annotated[Credentials, Depends(minting_credentials)]
