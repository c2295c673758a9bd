"""What the relay's routes share: settings, placement, keys, live sessions and calls, metrics,
limits. Routes reach the one :class:`Edge` of their app through the ``EdgeDep`` dependency."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from relay.drain import LiveSessions
from relay.ephemeral import EphemeralKey, KeySigner
from relay.pool import TransceiverPool
from relay.ratelimit import RateLimits
from relay.settings import RelaySettings
from transceiver.observability import Metrics
from transceiver.protocol.errors import server_error_event
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.wire import encode_server_event

if TYPE_CHECKING:
    from relay.webrtc import Call

log = logging.getLogger(__name__)


class KeyLimits:
    """At most ``limit`` concurrent sessions per API key on this relay (``None``: no limit).

    Sessions started with an ephemeral key count against the API key that minted it.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    @staticmethod
    def identity(key: str | None) -> str:
        return hashlib.sha256((key or "").encode()).hexdigest()[:16]  # keys are never kept

    @classmethod
    def holder_of(cls, key: str | None, ephemeral: EphemeralKey | None) -> str:
        if ephemeral is not None and ephemeral.owner is not None:
            return ephemeral.owner
        return cls.identity(key)

    def acquire(self, who: str) -> str | None:
        """``who`` (from ``holder_of``) as a token to release later, or ``None`` when it is
        at its limit."""
        if self.limit is not None and self._held[who] >= self.limit:
            return None
        self._held[who] += 1
        return who

    def release(self, who: str) -> None:
        self._held[who] -= 1
        if self._held[who] <= 0:
            del self._held[who]


class CallRegistry:
    """The WebRTC calls this relay holds, by call id (a sideband or hangup finds them here)."""

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}

    def __len__(self) -> int:
        return len(self.calls)

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def add(self, call: Call) -> None:
        self.calls[call.id] = call

    def drop(self, call: Call) -> None:
        self.calls.pop(call.id, None)


def default_peer_url(settings: RelaySettings) -> str:
    scheme = "https" if settings.ssl_certfile else "http"
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: other relays use our name
        host = socket.gethostname()
    return f"{scheme}://{host}:{settings.port}"


@dataclass
class Edge:
    settings: RelaySettings
    pool: TransceiverPool
    signer: KeySigner
    metrics: Metrics = field(default_factory=lambda: Metrics("realtime_relay"))
    live: LiveSessions = field(default_factory=LiveSessions)
    ids: IdFactory = field(default_factory=IdFactory)
    limits: KeyLimits = field(default_factory=lambda: KeyLimits(None))
    calls: CallRegistry = field(default_factory=CallRegistry)
    peer_url: str = ""
    rates: RateLimits = field(default_factory=lambda: RateLimits(None, None))

    @classmethod
    def create(cls, settings: RelaySettings) -> Edge:
        if settings.transceiver and not settings.link_secret:
            log.warning(
                "no link secret (RELAY_LINK_SECRET): the transceivers accept this relay only "
                "if they run with --insecure-no-link-secret"
            )
        pool = TransceiverPool(
            settings.transceiver,
            settings.max_frame_bytes,
            settings.resolve_interval_s,
            link_secret=settings.link_secret,
            link=settings.transceiver_link,
            use_sockets=settings.transceiver_socket,
            coalesce_s=settings.link_coalesce_ms / 1000,
        )
        edge = cls(
            settings,
            pool,
            KeySigner(settings.key_secret),
            limits=KeyLimits(settings.max_sessions_per_key),
            peer_url=(settings.peer_url or default_peer_url(settings)).rstrip("/"),
            rates=RateLimits(
                settings.rate_limit_requests_per_min, settings.rate_limit_tokens_per_min
            ),
        )
        pool.on_refusal = lambda member: edge.metrics.placement_refusals.labels(member.url).inc()
        return edge

    def error_event(self, message: str, code: str, type: str = "server_error") -> str:
        """An ``error`` server event, counted in the errors metric."""
        self.metrics.error(code)
        return self.encode_error(message, code, type)

    def encode_error(self, message: str, code: str, type: str = "server_error") -> str:
        """An ``error`` server event for an error already counted."""
        return encode_server_event(server_error_event(self.ids.event_id(), message, code, type))

    def describe(self) -> dict[str, Any]:
        """Counts only, for the open ``/healthz``: no internal address or load."""
        members = self.pool.members
        return {
            "draining": self.live.draining,
            "sessions": len(self.live),
            "transceivers": {
                "healthy": sum(1 for m in members if m.healthy and not m.draining),
                "total": len(members),
            },
        }

    def details(self) -> dict[str, Any]:
        """Every transceiver's URL and load, for ``/status`` (API keys only)."""
        return {
            "draining": self.live.draining,
            "sessions": len(self.live),
            "transceivers": [m.describe() for m in self.pool.members],
        }


def get_edge(connection: HTTPConnection) -> Edge:
    """The app's :class:`Edge` (``app.state.edge``), for HTTP and WebSocket routes alike."""
    edge = connection.app.state.edge
    assert isinstance(edge, Edge)
    return edge


EdgeDep = Annotated[Edge, Depends(get_edge)]
