"""relay/forward.py's ``forward`` itself: both directions end with it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from relay.forward import forward
from tests.waiting import eventually
from transceiver.observability import Tally

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Waiting:
    """A client (ASGI) and an upstream that never send anything: they note when the
    wait for them is cancelled."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"extensions": {}}  # not the direct path: ASGI
        self.waiting: set[str] = set()
        self.cancelled: set[str] = set()

    async def _wait(self, what: str) -> Any:
        self.waiting.add(what)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.add(what)
            raise

    async def receive(self) -> dict[str, Any]:
        return await self._wait("client")

    def __aiter__(self) -> Waiting:
        return self

    async def __anext__(self) -> str:
        return await self._wait("upstream")


async def test_cancelling_forward_ends_both_directions() -> None:
    """A session's handler cancelled (the relay shutting down) leaves no task of it reading
    the client or upstream."""
    both = Waiting()
    edge = SimpleNamespace(metrics=SimpleNamespace(events_in=Tally(), events_out=Tally()))
    task = asyncio.create_task(forward(both, both, edge))  # type: ignore[arg-type]
    await eventually(lambda: both.waiting == {"client", "upstream"}, what="both read")
    assert not task.done() and not both.cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: both.cancelled == {"client", "upstream"}, what="both cancelled")
