"""Admission: the one way a client session (WebSocket or WebRTC call) starts and ends.

:func:`admit` checks, in order, that the relay is not draining, that the caller's key is
under its session limit, and that a transceiver takes the session; then it counts the
session in the metrics and logs ``session.placed``. The :class:`Admission` it returns holds
all of that until :meth:`Admission.release` (idempotent) undoes it and logs
``session.closed``. Both transports keep their books through it, so they cannot drift.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from types import TracebackType

from relay.auth import Credentials
from relay.drain import Closer
from relay.edge import Edge
from relay.errors import ApiError, draining
from relay.link import Upstream
from relay.pool import Member, NoTransceiver
from transceiver.observability import log_event
from transceiver.protocol.contract import SessionSpec, Transport

log = logging.getLogger(__name__)

LIMIT_CODE = "session_limit_reached"


class Refused(ApiError):
    """Not admitted for now: the key holds its limit of sessions, or no transceiver took the
    session. A call answers with this HTTP error; a WebSocket is accepted, gets
    :meth:`event` and is closed with 1013 ("try again later")."""

    def event(self, edge: Edge) -> str:
        return edge.encode_error(self.message, self.code or LIMIT_CODE, self.event_type)

    @property
    def event_type(self) -> str:
        # The per-key limit is the client's doing; a full pool is the server's.
        return "invalid_request_error" if self.status == 429 else "server_error"


class Admission:
    """A placed session: its transceiver connection, and the books it is counted in."""

    def __init__(
        self,
        edge: Edge,
        spec: SessionSpec,
        holder: str,
        member: Member,
        upstream: Upstream,
    ) -> None:
        self.edge = edge
        self.spec = spec
        self.conn = spec.conn or ""
        self.member = member
        self.upstream = upstream
        self._holder = holder
        self.rates = edge.rates.session(holder)  # the key's request and token limits
        self._started = time.monotonic()
        self._released = False
        self._gauge = edge.metrics.sessions.labels(spec.transport.value)
        self._gauge.inc()
        edge.metrics.sessions_total.labels(spec.transport.value).inc()
        log_event(
            log,
            "session.placed",
            conn=self.conn,
            transport=spec.transport.value,
            transceiver=member.url,
        )

    def on_drain(self, closer: Closer) -> None:
        """Register the session for drain: ``closer`` ends it if it outlives the drain."""
        if not self._released:
            self.edge.live.add(self, closer)

    def release(self) -> None:
        """Undo the admission: the drain registry, the gauge, the key's limit, the
        transceiver's slot. Later calls do nothing. The upstream connection is the
        owner's to close (:meth:`close` does both)."""
        if self._released:
            return
        self._released = True
        edge = self.edge
        edge.live.discard(self)
        self._gauge.dec()
        edge.limits.release(self._holder)
        edge.pool.release(self.member)
        seconds = round(time.monotonic() - self._started, 1)
        log_event(log, "session.closed", conn=self.conn, seconds=seconds)

    async def close(self) -> None:
        """Release, and close the transceiver connection."""
        self.release()
        await self.upstream.close()

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def admit(edge: Edge, credentials: Credentials, spec: SessionSpec) -> Admission:
    """Admit a session described by ``spec`` (its ``conn`` defaults to a new ``conn_`` id).

    Raises :class:`~relay.errors.ApiError` 503 while draining, :class:`Refused` (429) at
    the key's limit and :class:`Refused` (503) when no transceiver takes it.
    """
    if edge.live.draining:
        raise draining()
    noun = "call" if spec.transport is Transport.WEBRTC else "session"
    holder = edge.limits.acquire(credentials.holder)
    if holder is None:
        edge.metrics.error(LIMIT_CODE)
        raise Refused(
            429, f"This API key already holds {edge.limits.limit} session(s) here.", LIMIT_CODE
        )
    spec = replace(spec, conn=spec.conn or edge.ids.new("conn"))
    try:
        member, upstream = await edge.pool.open_session(spec)
    except NoTransceiver:
        edge.limits.release(holder)
        edge.metrics.placement_refusals.labels("none").inc()
        edge.metrics.error(LIMIT_CODE)
        raise Refused(
            503, f"No transceiver can take this {noun} now; try again later.", LIMIT_CODE
        ) from None
    except BaseException:  # cancelled while placing: the key's slot is not held
        edge.limits.release(holder)
        raise
    admission = Admission(edge, spec, holder, member, upstream)
    if edge.live.draining:  # drain began while we placed: it would not close this session
        await admission.close()
        raise draining()
    return admission
