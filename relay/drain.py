"""Graceful drain: on SIGTERM stop taking sessions, let running ones finish, then close.

The relay's live sessions (WebSocket clients and WebRTC calls) register a closer here.
:class:`DrainingServer` is uvicorn's server with the first SIGTERM or SIGINT turned into a
drain; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[None]]

SHUTDOWN_MESSAGE = "The server is restarting; reconnect to continue."


class LiveSessions:
    def __init__(self) -> None:
        self.draining = False
        self._closers: dict[object, Closer] = {}

    def __len__(self) -> int:
        return len(self._closers)

    def add(self, key: object, closer: Closer) -> None:
        self._closers[key] = closer

    def discard(self, key: object) -> None:
        self._closers.pop(key, None)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new sessions; wait up to ``timeout_s`` for running ones; close the rest."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        if self._closers:
            log.info("draining: waiting up to %.0f s for %d session(s)", timeout_s, len(self))
        while self._closers and time.monotonic() < deadline:  # noqa: ASYNC110 (a count, with a deadline)
            await asyncio.sleep(0.1)
        if self._closers:
            log.warning("drain deadline reached: closing %d session(s)", len(self))
        closers = list(self._closers.values())
        self._closers.clear()
        results = await asyncio.gather(*(closer() for closer in closers), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.debug("closing a session during drain failed: %s", result)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, sessions: LiveSessions, timeout_s: float) -> None:
        super().__init__(config)
        self.sessions = sessions
        self.timeout_s = timeout_s
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.timeout_s <= 0 or not self.started:
            self.force_exit = self._drain is not None
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.sessions.drain(self.timeout_s)
        self.should_exit = True
