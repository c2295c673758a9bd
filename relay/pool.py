"""Placement of sessions on transceivers: least sessions first, next one on refusal."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger(__name__)


class NoTransceiver(Exception):
    """Every transceiver refused or could not be reached."""


@dataclass
class Member:
    url: str
    sessions: int = 0


class TransceiverPool:
    def __init__(self, urls: list[str], max_frame_bytes: int) -> None:
        self.members = [Member(url.rstrip("/")) for url in urls]
        self._max_frame_bytes = max_frame_bytes

    async def open_session(self, query: str) -> tuple[Member, ClientConnection]:
        for member in sorted(self.members, key=lambda m: m.sessions):
            try:
                connection = await connect(
                    f"{member.url}/v1/sessions?{query}",
                    max_size=self._max_frame_bytes,
                    compression=None,
                    ping_interval=None,
                    open_timeout=10,
                )
            except Exception as exc:  # refused, full (HTTP 503) or unreachable: try the next
                log.warning("transceiver %s refused a session: %s", member.url, exc)
                continue
            member.sessions += 1
            return member, connection
        raise NoTransceiver("no transceiver is available")

    def release(self, member: Member) -> None:
        member.sessions -= 1
