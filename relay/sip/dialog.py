"""A call's SIP dialog, from the server's side (RFC 3261 sections 12, 13.3, 17).

- The INVITE server transaction: ``100 Trying`` at once, then a final response, resent
  on a doubling timer (T1 = 500 ms up to T2 = 4 s) until the caller's ACK, for at most
  64*T1 (section 13.3.1.4 for 2xx, timers G and H of section 17.2.1 otherwise). A
  retransmitted INVITE gets the last response again.
- Requests the server sends in the dialog (BYE, REFER): a client transaction, resent on
  UDP on the same timer until a final response (timer E, section 17.1.2.2), at most 64*T1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from relay.sip.message import SipMessage, response_to, tag_of, uri_of
from relay.sip.transport import Peer

log = logging.getLogger(__name__)

T1_S = 0.5
T2_S = 4.0
TRANSACTION_S = 64 * T1_S
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, INFO"


class DialogState(enum.Enum):
    PENDING = "pending"  # INVITE received, no final response yet
    ANSWERED = "answered"  # 200 OK sent, no ACK yet
    CONFIRMED = "confirmed"
    REJECTED = "rejected"  # a final error response sent
    ENDED = "ended"


def branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)  # RFC 3261 section 8.1.1.7: the magic cookie


class Dialog:
    def __init__(self, invite: SipMessage, peer: Peer, contact_host: str, port: int) -> None:
        self.invite = invite
        self.peer = peer
        self.local_tag = secrets.token_hex(6)
        self.remote_target = uri_of(invite.get("Contact")) or uri_of(invite.get("From"))
        self.route = invite.get_all("Record-Route")
        transport = ";transport=tcp" if peer.transport == "TCP" else ""
        host = f"[{contact_host}]" if ":" in contact_host else contact_host
        self.address = contact_host
        self.via_host = f"{host}:{port}"
        self.contact = f"<sip:relay@{host}:{port}{transport}>"
        self.state = DialogState.PENDING
        self.final: SipMessage | None = None
        self.remote_ended = False
        self.acked = asyncio.Event()
        self._cseq = 0
        self._waiting: dict[str, asyncio.Future[SipMessage]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    # -- the INVITE server transaction ---------------------------------------------

    def respond(
        self, status: int, reason: str, body: bytes = b"", content_type: str = ""
    ) -> SipMessage:
        """Answer the INVITE; a final response is resent until ACKed (see the module)."""
        response = response_to(self.invite, status, reason, self.local_tag)
        if 100 < status < 300:
            response.headers.append(("Contact", self.contact))
        if 200 <= status < 300:
            response.headers.append(("Allow", ALLOW))
        if body:
            response.headers.append(("Content-Type", content_type))
            response.body = body
        self.peer.send(response)
        if status >= 200:
            self.final = response
            self.state = DialogState.ANSWERED if status < 300 else DialogState.REJECTED
            if self.peer.transport == "UDP" or status < 300:
                self._spawn(self._resend_final(response))
        return response

    def resend(self) -> None:
        """A retransmitted INVITE: the last final response again (or 100 Trying)."""
        if self.final is not None:
            self.peer.send(self.final)
        else:
            self.peer.send(response_to(self.invite, 100, "Trying"))

    def ack(self) -> None:
        self.acked.set()
        if self.state is DialogState.ANSWERED:
            self.state = DialogState.CONFIRMED

    async def _resend_final(self, response: SipMessage) -> None:
        interval = T1_S
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TRANSACTION_S):
                while not self.acked.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await self.acked.wait()
                    if self.acked.is_set() or self.final is not response:
                        return
                    self.peer.send(response)
                    interval = min(interval * 2, T2_S)

    async def wait_ack(self) -> bool:
        """Whether the ACK came within 64*T1 of the final response."""
        try:
            async with asyncio.timeout(TRANSACTION_S):
                await self.acked.wait()
        except TimeoutError:
            return False
        return True

    # -- requests in the dialog --------------------------------------------------------

    def _request(self, method: str) -> SipMessage:
        self._cseq += 1
        request = SipMessage(method=method, uri=self.remote_target)
        protocol = "TCP" if self.peer.transport == "TCP" else "UDP"
        request.headers += [
            ("Via", f"SIP/2.0/{protocol} {self.via_host};branch={branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", self._local_party()),
            ("To", self.invite.get("From")),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} {method}"),
            ("Contact", self.contact),
        ]
        request.headers += [("Route", route) for route in self.route]
        return request

    def _local_party(self) -> str:
        to = self.invite.get("To")
        return to if tag_of(to) else f"{to};tag={self.local_tag}"

    async def request(self, method: str, headers: list[tuple[str, str]]) -> SipMessage | None:
        """Send ``method`` in the dialog; its final response, ``None`` if none came."""
        request = self._request(method)
        request.headers += headers
        key = f"{self._cseq} {method}"
        future: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        interval = T1_S
        try:
            async with asyncio.timeout(TRANSACTION_S):
                while True:
                    self.peer.send(request)
                    if self.peer.transport == "TCP":
                        return await future
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            return await asyncio.shield(future)
                    interval = min(interval * 2, T2_S)
        except TimeoutError:
            log.info("sip call %s: no final response to %s", self.call_id, method)
            return None
        finally:
            self._waiting.pop(key, None)

    def response(self, message: SipMessage) -> None:
        """A response to one of our requests (a final one completes it)."""
        number, method = message.cseq
        future = self._waiting.get(f"{number} {method}")
        if future is not None and not future.done() and message.status >= 200:
            future.set_result(message)

    async def bye(self) -> None:
        if self.state is DialogState.ENDED:
            return
        self.state = DialogState.ENDED
        await self.request("BYE", [])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
