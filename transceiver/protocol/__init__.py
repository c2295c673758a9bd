"""Pure, sans-I/O Realtime protocol core.

No asyncio, sockets, threads, clocks or numpy here: time and ids are arguments.
Push client events in with ``RealtimeSession.receive_client_event`` and the
``receive_*`` / ``response_*`` methods, then drain ``events_to_send()`` and
``effects()``.
"""

from transceiver.protocol.contract import SessionKind
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.session import RealtimeSession

__all__ = ["ClientError", "IdFactory", "RealtimeSession", "SessionKind"]
