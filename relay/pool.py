"""Placement of sessions on transceivers.

Transceivers come from a list of URLs. Each URL's host name is resolved, and every address
it resolves to is one transceiver: ``ws://transceiver:8100`` behind ``docker compose up
--scale transceiver=3`` or a Kubernetes headless service is three. Names are re-resolved
and every transceiver's ``GET /load`` is polled every ``refresh_s``.

A new session goes to the least-loaded transceiver with room; one that refuses (full,
draining, gone) is skipped for the next. When none accepts, :class:`NoTransceiver`.

Every request to a transceiver (the session handshake, ``/load``, ``/v1/models``) carries
the link secret (``--link-secret``) as ``Authorization: Bearer``; a transceiver that
answers 401 has another secret, and is marked down until it accepts ours.

Sessions travel on one multiplexed link per transceiver (relay/link.py) where the
transceiver offers it, else on one WebSocket each (``--transceiver-link``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.link import LinkRefused, Links, Upstream
from transceiver.protocol.contract import SessionSpec

log = logging.getLogger(__name__)

# One handshake may take OPEN_TIMEOUT_S, all of a placement PLACEMENT_TIMEOUT_S: a client
# hears "try again later" within that, however many transceivers are down.
OPEN_TIMEOUT_S = 5.0
PLACEMENT_TIMEOUT_S = 10.0
PING_S = 20.0


class NoTransceiver(Exception):
    """Every transceiver refused or could not be reached."""


@dataclass
class Member:
    url: str
    target: str = ""  # the configured URL it came from
    sessions: int = 0  # sessions this relay placed there and still holds
    reported: int = 0  # sessions the transceiver reported (from every relay)
    capacity: int | None = None
    cpu: float = 0.0
    draining: bool = False
    healthy: bool = True
    refused_secret: bool = False  # it answered 401: its link secret is not ours
    link: bool = False  # it offers the multiplexed link (relay/link.py)
    socket: str | None = None  # ... on this Unix socket too, and it is on this machine

    @property
    def tls_name(self) -> str | None:
        """The name a ``wss://`` member's certificate is checked against: it is dialled by
        the address its configured name resolved to."""
        host = urlsplit(self.target).hostname or ""
        if not self.url.startswith("wss://") or _is_address(host) or host == "localhost":
            return None
        return host

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    def has_room(self) -> bool:
        if self.draining or not self.healthy:
            return False
        return self.capacity is None or max(self.sessions, self.reported) < self.capacity

    def load(self) -> tuple[float, float]:
        used = max(self.sessions, self.reported)
        return (used / self.capacity if self.capacity else float(used), self.cpu)

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "sessions": self.sessions,
            "reported_sessions": self.reported,
            "max_sessions": self.capacity,
            "cpu": self.cpu,
            "draining": self.draining,
            "healthy": self.healthy,
            "refused_link_secret": self.refused_secret,
            "link": self.link,  # it offers the multiplexed link
            "link_socket": self.socket,  # ... on this Unix socket, which this relay uses
        }


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (sorted, so the order is stable)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_loopback(url: str) -> bool:
    """A ``ws://`` URL whose host is a loopback address or ``localhost``: this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "ws":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TransceiverPool:
    def __init__(
        self,
        urls: list[str],
        max_frame_bytes: int,
        refresh_s: float = 5.0,
        resolver: Resolver = resolve,
        transport: httpx.AsyncBaseTransport | None = None,
        link_secret: str | None = None,
        link: str = "mux",
        use_sockets: bool = True,
        coalesce_s: float = 0.0,
    ) -> None:
        """``resolver`` and ``transport`` (the HTTP transport of the load polls) are
        injected by tests, which must not send to the addresses a fake resolver names.
        ``link_secret`` goes with every request (none: the transceivers must run with
        ``--insecure-no-link-secret``). ``link``: ``"mux"`` puts sessions on one link per
        transceiver that offers it, ``"websocket"`` opens one WebSocket per session;
        ``use_sockets``: a link to a transceiver on this machine goes over the Unix socket
        it offers (``--link-socket``), if it does. ``coalesce_s``: how long a link's audio
        appends may wait for others (``--link-coalesce-ms``, transceiver/link.py)."""
        self._targets = [url.rstrip("/") for url in urls]
        self._headers = {"Authorization": f"Bearer {link_secret}"} if link_secret else {}
        self._max_frame_bytes = max_frame_bytes
        self._refresh_s = refresh_s
        self._resolver = resolver
        self._transport = transport
        self._tls: ssl.SSLContext | None = None  # built once: about 40 ms of CPU each time
        self._members: dict[str, Member] = {}
        self._task: asyncio.Task[None] | None = None
        self.on_refusal: Callable[[Member], None] = lambda member: None
        self._use_links = link == "mux"
        self._use_sockets = use_sockets
        self._links = Links(self._headers, max_frame_bytes, PING_S, coalesce_s)
        for target in self._targets:  # literal addresses need no lookup
            host = urlsplit(target).hostname or ""
            if _is_address(host) or host == "localhost":
                self._members[target] = Member(target, target)

    @property
    def members(self) -> list[Member]:
        return list(self._members.values())

    def _expand(self, target: str) -> list[str]:
        parts = urlsplit(target)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
        if _is_address(host) or host == "localhost":
            return [target]
        try:
            addresses = self._resolver(host, port)
        except OSError as exc:
            log.warning("could not resolve transceiver host %s: %s", host, exc)
            return [m.url for m in self._members.values() if m.target == target]
        urls = []
        for address in addresses:
            shown = f"[{address}]" if ":" in address else address
            urls.append(f"{parts.scheme}://{shown}:{port}{parts.path}")
        return urls

    async def refresh(self) -> None:
        """Re-resolve the names and poll every transceiver's load."""
        loop = asyncio.get_running_loop()
        wanted: list[str] = []
        for target in self._targets:
            for url in await loop.run_in_executor(None, self._expand, target):
                wanted.append(url)
                self._members.setdefault(url, Member(url, target))
        for url in list(self._members):
            member = self._members[url]
            if url not in wanted and member.sessions == 0:
                log.info("transceiver %s left the pool", url)
                del self._members[url]
        async with self.http_client(timeout_s=2) as client:
            await asyncio.gather(*(self._poll(client, m) for m in self.members))

    def http_client(self, timeout_s: float) -> httpx.AsyncClient:
        """A client for the members' HTTP endpoints (``/load``, ``/v1/models``), sending
        the link secret."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # as httpx's default; SSL_CERT_FILE too
        return httpx.AsyncClient(
            timeout=timeout_s, transport=self._transport, headers=self._headers, verify=self._tls
        )

    async def _poll(self, client: httpx.AsyncClient, member: Member) -> None:
        extensions: dict[str, Any] = {}
        if member.tls_name is not None:
            extensions["sni_hostname"] = member.tls_name
        try:
            reply = await client.get(f"{member.http_url}/load", extensions=extensions)
            if reply.status_code == 401:
                self._secret_refused(member)
                return
            reply.raise_for_status()
            load = reply.json()
            member.reported = int(load.get("sessions", 0))
            capacity = load.get("max_sessions")
            member.capacity = int(capacity) if capacity is not None else None
            member.cpu = float(load.get("cpu", 0.0))
            member.draining = bool(load.get("draining", False))
            member.link = load.get("link") == 1
            member.socket = self._socket_of(member, load.get("link_socket"))
            member.healthy = True
            member.refused_secret = False
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            member.healthy = False

    def _socket_of(self, member: Member, offered: object) -> str | None:
        """The Unix socket to link over: the one the member offers, when it is reached on
        loopback (so on this machine), without TLS, and sockets are not turned off."""
        if not self._use_sockets or not isinstance(offered, str) or not offered:
            return None
        return offered if is_loopback(member.url) else None

    def _secret_refused(self, member: Member) -> None:
        """The member answered 401: marked down, and said once until it accepts again."""
        member.healthy = False
        if not member.refused_secret:
            member.refused_secret = True
            log.error(
                "transceiver %s refused the link secret (HTTP 401): give the relay and its "
                "transceivers the same RELAY_LINK_SECRET",
                member.url,
            )

    async def _refresher(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def start(self) -> None:
        if self._task is None:
            await self.refresh()
            self._task = asyncio.create_task(self._refresher())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._links.aclose()

    def _candidates(self) -> list[Member]:
        """Least loaded with room first; then the rest, in case the figures are stale."""
        members = self.members
        roomy = sorted((m for m in members if m.has_room()), key=Member.load)
        others = sorted((m for m in members if not m.has_room()), key=Member.load)
        return roomy + others

    async def open_session(self, spec: SessionSpec) -> tuple[Member, Upstream]:
        """A session on the first candidate that accepts, within ``PLACEMENT_TIMEOUT_S``,
        opened with ``spec`` (its first frame)."""
        await self.start()
        deadline = asyncio.get_running_loop().time() + PLACEMENT_TIMEOUT_S
        for member in self._candidates():
            left_s = deadline - asyncio.get_running_loop().time()
            if left_s <= 0:
                break
            # Counted before the handshake, so a burst of sessions spreads out.
            member.sessions += 1
            placed = False
            try:
                connection = await self._connect(member, spec, min(OPEN_TIMEOUT_S, left_s))
                placed = True
            except (InvalidStatus, LinkRefused) as exc:  # full or draining (503): try the next
                status = exc.status if isinstance(exc, LinkRefused) else exc.response.status_code
                member.draining = status == 503
                if status == 401:
                    self._secret_refused(member)
                self._refused(member, f"HTTP {status}")
                continue
            except Exception as exc:  # unreachable: try the next, and mark it down
                member.healthy = False
                self._refused(member, str(exc) or type(exc).__name__)
                continue
            finally:
                if not placed:
                    member.sessions -= 1
            member.healthy = True
            return member, connection
        raise NoTransceiver("no transceiver is available")

    async def _connect(self, member: Member, spec: SessionSpec, timeout_s: float) -> Upstream:
        """The session opened on ``member``: on its link, or on a WebSocket of its own."""
        if self._use_links and member.link:
            return await self._links.open(
                member.url, member.tls_name, spec, timeout_s, socket=member.socket
            )
        extra: dict[str, Any] = {}
        if member.tls_name is not None:
            extra["server_hostname"] = member.tls_name
        connection = await connect(
            f"{member.url}/v1/sessions",
            max_size=self._max_frame_bytes,
            compression=None,
            # A transceiver that vanishes without a FIN (a dead node, a partition) is
            # noticed within PING_S * 2 and its sessions end with 1011.
            ping_interval=PING_S,
            ping_timeout=PING_S,
            # Frames read ahead for a client that stopped reading: 4, not 16 (each may be
            # up to max_frame_bytes) before the transceiver is pushed back.
            max_queue=4,
            open_timeout=timeout_s,
            additional_headers=self._headers,
            **extra,
        )
        await connection.send(spec.encode())
        return connection

    def _refused(self, member: Member, why: str) -> None:
        log.warning("transceiver %s refused a session: %s", member.url, why)
        self.on_refusal(member)

    def release(self, member: Member) -> None:
        member.sessions -= 1
