"""The relay's links: one multiplexed connection per transceiver (transceiver/link.py).

A transceiver that offers the link (``"link": 1`` in its ``GET /load``) gets its sessions
over one ``/v1/link`` WebSocket, dialled on the first session and kept while it lives; one
that does not (an older transceiver during a rolling upgrade) gets one WebSocket per
session, as before. ``--transceiver-link websocket`` uses one WebSocket per session for
every transceiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import InvalidHandshake

from transceiver.link import (
    LINK_PATH,
    Link,
    LinkClientConnection,
    LinkSession,
    carrier_max_size,
)
from transceiver.protocol import link as frames
from transceiver.protocol.contract import SessionSpec
from transceiver.protocol.link import Kind

log = logging.getLogger(__name__)

# What the relay's session code holds for a session: its own WebSocket, or a session on a
# link; both have send, recv, async iteration, close(code, reason), state and
# protocol.close_rcvd.
Upstream = ClientConnection | LinkSession


class LinkRefused(Exception):
    """The transceiver refused the session (``status`` as its HTTP answer would be)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class Links:
    """The relay's open links, by member URL."""

    def __init__(
        self, headers: dict[str, str], max_frame_bytes: int, ping_s: float, coalesce_s: float = 0.0
    ) -> None:
        self._headers = headers
        self._coalesce_s = coalesce_s
        self._max_frame_bytes = max_frame_bytes
        self._ping_s = ping_s
        self._links: dict[str, Link] = {}
        self._dialing: dict[str, asyncio.Future[Link]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(
        self,
        url: str,
        tls_name: str | None,
        spec: SessionSpec,
        timeout_s: float,
        socket: str | None = None,
    ) -> LinkSession:
        """A session on the link to ``url`` (dialled if none is open: over the Unix socket
        ``socket`` when given and it answers, else TCP), opened with ``spec``.
        :class:`LinkRefused` when the transceiver refuses it; a connection error or
        ``TimeoutError`` when it cannot be reached in ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            link = await self._link(url, tls_name, socket)
            if link.closed:  # it died while this waited on its dial
                raise ConnectionError(f"the link to {url} closed")
            session = link.new_session()
            waiter: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
            link.opening[session.id] = waiter
            link.write(frames.encode(Kind.OPEN, session.id, spec.encode().encode()))
            try:
                answer = await waiter
            finally:
                if not waiter.done() or waiter.cancelled() or waiter.exception():
                    link.sessions.pop(session.id, None)
        if answer.kind is Kind.REFUSED:
            link.sessions.pop(session.id, None)
            raise LinkRefused(*frames.decode_code(answer))
        return session

    async def _link(self, url: str, tls_name: str | None, socket: str | None) -> Link:
        link = self._links.get(url)
        if link is not None and not link.closed:
            return link
        dialing = self._dialing.get(url)
        if dialing is None:  # one dial per transceiver, however many sessions wait on it
            dialing = asyncio.ensure_future(self._dial(url, tls_name, socket))
            self._dialing[url] = dialing
            dialing.add_done_callback(lambda done: self._dialed(url, done))
        return await asyncio.shield(dialing)

    def _dialed(self, url: str, done: asyncio.Future[Link]) -> None:
        self._dialing.pop(url, None)
        if not done.cancelled():
            done.exception()  # retrieved: the sessions waiting on it have it

    async def _dial(self, url: str, tls_name: str | None, socket: str | None) -> Link:
        options: dict[str, Any] = dict(
            max_size=carrier_max_size(self._max_frame_bytes),
            compression=None,
            # A transceiver that vanishes without a FIN (a dead node, a partition) is
            # noticed within 2 * ping_s (a ping, its pong's wait, the close's wait), and
            # every session on the link ends with 1011.
            ping_interval=self._ping_s,
            ping_timeout=self._ping_s / 2,
            close_timeout=self._ping_s / 2,
            additional_headers=self._headers,
            create_connection=LinkClientConnection,
        )
        carrier: ClientConnection | None = None
        via = "TCP"
        if socket is not None:
            try:
                carrier = await unix_connect(socket, f"{url}{LINK_PATH}", **options)
                via = f"unix:{socket}"
            except (OSError, InvalidHandshake) as exc:  # gone, or not it: TCP it is
                log.warning("link to transceiver %s: unix:%s failed (%s), TCP", url, socket, exc)
        if carrier is None:
            if tls_name is not None:
                options["server_hostname"] = tls_name
            carrier = await connect(f"{url}{LINK_PATH}", **options)
        link = Link(carrier, self._max_frame_bytes, coalesce_s=self._coalesce_s)
        self._links[url] = link
        task = asyncio.create_task(self._run(url, link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("link to transceiver %s open (%s)", url, via)
        return link

    async def _run(self, url: str, link: Link) -> None:
        try:
            await link.run()
        finally:
            if self._links.get(url) is link:
                del self._links[url]
            log.info("link to transceiver %s closed", url)

    async def aclose(self) -> None:
        for link in list(self._links.values()):
            await link.aclose()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
