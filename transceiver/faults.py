"""Fault knobs for testing clients against the mock (``--mock-fault-*``).

They wrap a session's ``send`` and ``close``: the runner knows nothing of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from transceiver.protocol.errors import server_error_event
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.wire import encode_server_event

Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True)
class Faults:
    """After ``error_after`` sent events, one injected ``error``; after ``close_after``,
    close 1011; after ``stall_after``, nothing more is sent (a hung server)."""

    error_after: int | None = None
    close_after: int | None = None
    stall_after: int | None = None

    @property
    def any(self) -> bool:
        return (self.error_after, self.close_after, self.stall_after) != (None, None, None)

    def wrap(self, send: Send, close: Close, ids: IdFactory) -> Send:
        """``send`` with these faults injected."""
        if not self.any:
            return send
        sent = 0
        closed = False

        async def faulty_send(message: str) -> None:
            nonlocal sent, closed
            if closed or (self.stall_after is not None and sent >= self.stall_after):
                return  # stalled, or closed by a fault: swallow everything from now on
            await send(message)
            sent += 1
            if self.error_after is not None and sent == self.error_after:
                message = "An error injected by the mock's fault knobs."
                await send(
                    encode_server_event(
                        server_error_event(ids.event_id(), message, "injected_fault")
                    )
                )
            if self.close_after is not None and sent >= self.close_after:
                closed = True
                await close(1011, "injected fault")

        return faulty_send
