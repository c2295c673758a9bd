"""The link secret tests give relays and transceivers (``RELAY_LINK_SECRET``), and how a test
finds a relay's transceivers (``GET /status``) and asks one of them directly."""

from __future__ import annotations

import httpx

from tests.servers import RunningServer

LINK_SECRET = "test-link-secret-0123456789"
LINK_ENV = {"RELAY_LINK_SECRET": LINK_SECRET}
LINK_HEADERS = {"Authorization": f"Bearer {LINK_SECRET}"}


async def transceiver_urls(server: RunningServer, key: str | None = None) -> list[str]:
    """The ``http://`` URLs of a relay's transceivers, from its ``/status`` (an API key
    where the relay wants one)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    root = server.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{root}/status", headers=headers)
    reply.raise_for_status()
    return [m["url"].replace("ws://", "http://", 1) for m in reply.json()["transceivers"]]
