"""The SIP endpoint (``--sip-listen``): incoming calls as Realtime sessions, the way
OpenAI's SIP interface takes them (https://platform.openai.com/docs/guides/realtime-sip).

An INVITE with a G.711 offer gets ``100 Trying``; then, with ``--sip-webhook-url``, ``180
Ringing`` and a signed ``realtime.call.incoming`` webhook (relay/sip/webhook.py), after
which the app accepts (``POST /v1/realtime/calls/{call_id}/accept``, with the session) or
rejects it (``/reject``) within ``--sip-accept-timeout-s`` (else 480). Without a webhook
URL the call is accepted at once with ``--sip-session``. Accepting admits the session like
any other (:func:`relay.phone.admit_call`, transport ``sip``; the caller's address holds the
place of an API key in ``--max-sessions-per-key``), opens an RTP port and answers ``200
OK`` with the SDP answer. A BYE from the caller, ``/hangup``, the session's end, a drain,
or no RTP for ``--sip-rtp-timeout-s`` ends the call (the server sends BYE when it ends it);
``/refer`` sends a REFER (a transfer) to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

from relay.admission import Admission, Refused
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge
from relay.ephemeral import call_id_for
from relay.errors import ApiError, draining
from relay.phone import admit_call, call_spec, phone_session
from relay.sip import sdp
from relay.sip.call import SipCall
from relay.sip.dialog import ALLOW, Dialog, DialogState
from relay.sip.media import NoRtpPort, local_address_towards, open_rtp, parse_ports
from relay.sip.message import SipMessage, is_number, response_to
from relay.sip.transport import Peer, SipTransports
from relay.sip.webhook import WebhookError, incoming_event, post_event
from relay.webrtc import Call, first_event
from transceiver.observability import log_event
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.contract import Transport
from transceiver.protocol.errors import ClientError

log = logging.getLogger(__name__)

MAX_PENDING_CALLS = 256  # INVITEs waiting for accept or reject; more get 503
# Dialogs that are not a call: pending, or refused (or cancelled, or hung up) and waiting
# for their ACK or the end of their retransmissions (up to 32 s each). Past this the
# oldest refused ones are forgotten; only when all are pending do INVITEs get 503.
MAX_IDLE_DIALOGS = 4 * MAX_PENDING_CALLS
_CODECS = {"PCMU": AudioFormatType.PCMU, "PCMA": AudioFormatType.PCMA}


def parse_allow(text: str | None) -> list[IPv4Network | IPv6Network] | None:
    """``--sip-allow``: the networks INVITEs may come from (``None``: any)."""
    if not text:
        return None
    return [ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too); ``ValueError`` if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not is_number(port) or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Pending:
    """A call offered and not yet accepted or rejected."""

    call_id: str
    dialog: Dialog
    offer: sdp.Offer
    holder: str
    accepting: bool = False
    decided: asyncio.Event = field(default_factory=asyncio.Event)


def _ip_version(host: str) -> int | None:
    try:
        return ip_address(host).version
    except ValueError:
        return None


def _unmapped(host: str) -> str:
    """``::ffff:a.b.c.d`` (how a dual-stack socket writes an IPv4 peer) as ``a.b.c.d``."""
    if host.startswith("::ffff:"):
        with contextlib.suppress(ValueError):
            mapped = ip_address(host).ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None:
                return str(mapped)
    return host


def _hung_up(call_id: str) -> ApiError:
    return ApiError(404, f"The caller of '{call_id}' hung up.", "call_not_found")


class SipEndpoint:
    def __init__(self, edge: Edge) -> None:
        settings = edge.settings
        assert settings.sip_listen is not None
        self.edge = edge
        self.settings = settings
        self.host, self.port = parse_listen(settings.sip_listen)
        self.rtp_ports = parse_ports(settings.sip_rtp_ports) if settings.sip_rtp_ports else None
        self.allowed = parse_allow(settings.sip_allow)
        self.ip_version = _ip_version(self.host)  # the RTP sockets' (None: a host name)
        try:
            phone_session(settings.sip_session)
        except ClientError as exc:
            raise ValueError(f"--sip-session is not valid: {exc.message}") from None
        self.transports = SipTransports(self)
        self.dialogs: dict[str, Dialog] = {}  # by SIP Call-ID
        self.pending: dict[str, Pending] = {}  # by call id
        self.calls: dict[str, SipCall] = {}  # by SIP Call-ID
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.transports.start(self.host, self.port)
        self.port = self.transports.port
        log.info("sip: listening on %s:%d (UDP and TCP)", self.host, self.port)

    async def stop(self) -> None:
        for pending in list(self.pending.values()):
            self._refuse(pending, 503, "Service Unavailable")
        for call in list(self.calls.values()):
            await call.close()
        if self._tasks:  # the BYEs and final responses: bounded by their transactions
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        for dialog in self.dialogs.values():
            dialog.stop()
        await self.transports.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- SIP in ------------------------------------------------------------------------

    def receive(self, message: SipMessage, peer: Peer) -> None:
        if not message.is_request:
            dialog = self.dialogs.get(message.call_id)
            if dialog is not None:
                dialog.response(message)
            return
        handlers = {
            "INVITE": self._invite,
            "ACK": self._ack,
            "CANCEL": self._cancel,
            "BYE": self._bye,
            "OPTIONS": self._options,
        }
        handlers.get(message.method, self._other)(message, peer)

    def _invite(self, invite: SipMessage, peer: Peer) -> None:
        dialog = self.dialogs.get(invite.call_id)
        if dialog is not None:
            if invite.cseq == dialog.invite.cseq:
                dialog.resend()  # a retransmission
            else:
                self._reinvite(dialog, invite, peer)
            return
        if not (invite.get("Via") and invite.call_id and invite.get("From") and invite.get("To")):
            peer.send(response_to(invite, 400, "Bad Request"))
            return
        caller = _unmapped(peer.address[0])  # an IPv4 caller on a dual-stack socket too
        if not self._allowed(caller):
            log.warning("sip: INVITE from %s refused (--sip-allow)", caller)
            peer.send(response_to(invite, 403, "Forbidden", "refused"))
            return
        if self.edge.live.draining or self._full():
            busy = response_to(invite, 503, "Service Unavailable", "refused")
            busy.headers.append(("Retry-After", "30"))
            peer.send(busy)
            return
        try:
            offer = self._offer_of(invite)
        except (sdp.SdpError, UnicodeDecodeError) as exc:
            log.info("sip: INVITE %s refused: %s", invite.call_id, exc)
            peer.send(response_to(invite, 488, "Not Acceptable Here", "refused"))
            return
        address = self.settings.sip_public_address or local_address_towards(caller, self.host)
        dialog = Dialog(invite, peer, address, self.port)
        self.dialogs[invite.call_id] = dialog
        peer.send(response_to(invite, 100, "Trying"))
        call_id = call_id_for(self.edge.signer, self.edge.peer_url)
        pending = Pending(call_id, dialog, offer, f"sip:{caller}")
        self.pending[call_id] = pending
        log_event(
            log,
            "sip.invite",
            conn=call_id,
            transport=peer.transport,
            codec=offer.codec,
            dtmf=offer.dtmf_payload_type is not None,
        )
        if self.settings.sip_webhook_url:
            dialog.respond(180, "Ringing")
            self._spawn(self._announce(pending, self.settings.sip_webhook_url))
        else:
            self._spawn(self._accept_default(pending))

    def _full(self) -> bool:
        """Whether a new INVITE must wait: too many pending, or too many dialogs that are
        not calls once the oldest refused ones (waiting for their ACK) are forgotten."""
        if len(self.pending) >= MAX_PENDING_CALLS:
            return True
        excess = len(self.dialogs) - len(self.calls) - MAX_IDLE_DIALOGS + 1
        if excess <= 0:
            return False
        refused = [d for d in self.dialogs.values() if d.state is DialogState.REJECTED]
        for oldest in refused[:excess]:
            oldest.acked.set()  # its final response is no longer resent, nor waited on
            self._forget(oldest)
        return len(refused) < excess

    def _offer_of(self, invite: SipMessage) -> sdp.Offer:
        """The caller's audio offer, for an RTP socket of this host; ``SdpError`` (488)."""
        offer = sdp.parse_offer(invite.body.decode("utf-8"))
        if self.host == "::" and offer.ip_version == 4:  # a dual-stack socket
            offer = replace(offer, address=f"::ffff:{offer.address}")
        if self.ip_version not in (None, offer.ip_version):
            raise sdp.SdpError(f"the offer is IPv{offer.ip_version}, RTP here IPv{self.ip_version}")
        return offer

    def _allowed(self, host: str) -> bool:
        if self.allowed is None:
            return True
        try:
            address = ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allowed)

    def _reinvite(self, dialog: Dialog, invite: SipMessage, peer: Peer) -> None:
        """A re-INVITE (a session refresh, a hold, a transfer moving the caller's media):
        the same answer; RTP goes to the offer's address, whose source is learnt again,
        when it moved."""
        if dialog.final is None or dialog.final.status >= 300:
            peer.send(response_to(invite, 491, "Request Pending", dialog.local_tag))
            return
        call = self.calls.get(dialog.call_id)
        with contextlib.suppress(sdp.SdpError, UnicodeDecodeError):  # no usable offer: as is
            offer = self._offer_of(invite)
            if call is not None:
                call.rtp.move((offer.address, offer.port))
        again = response_to(invite, 200, "OK", dialog.local_tag)
        again.headers += [("Contact", dialog.contact), ("Content-Type", "application/sdp")]
        again.body = dialog.final.body
        peer.send(again)

    def _ack(self, ack: SipMessage, peer: Peer) -> None:
        dialog = self.dialogs.get(ack.call_id)
        if dialog is None:
            return
        dialog.ack()
        if dialog.state is DialogState.REJECTED:
            self._forget(dialog)

    def _cancel(self, cancel: SipMessage, peer: Peer) -> None:
        dialog = self.dialogs.get(cancel.call_id)
        if dialog is None:
            peer.send(response_to(cancel, 481, "Call/Transaction Does Not Exist"))
            return
        peer.send(response_to(cancel, 200, "OK", dialog.local_tag))
        pending = self._pending_of(dialog)
        if pending is not None:
            log_event(log, "sip.cancelled", conn=pending.call_id)
            self._refuse(pending, 487, "Request Terminated")

    def _bye(self, bye: SipMessage, peer: Peer) -> None:
        dialog = self.dialogs.get(bye.call_id)
        if dialog is None:
            peer.send(response_to(bye, 481, "Call/Transaction Does Not Exist"))
            return
        peer.send(response_to(bye, 200, "OK", dialog.local_tag))
        if dialog.state is DialogState.REJECTED:  # this BYE again: its INVITE has its 487
            return
        call = self.calls.get(bye.call_id)
        if call is not None:
            log_event(log, "sip.bye", conn=call.id, by="caller")
            self._spawn(call.close())
        pending = self._pending_of(dialog)
        if pending is not None and dialog.state is DialogState.PENDING:
            # An early dialog's BYE: its INVITE still gets its final answer (RFC 3261
            # section 15.1.2), and the dialog goes once that is ACKed.
            self._refuse(pending, 487, "Request Terminated")
            return
        dialog.remote_ended = True
        dialog.state = DialogState.ENDED
        if pending is not None:
            self.pending.pop(pending.call_id, None)
            pending.decided.set()
        self._forget(dialog)

    def _options(self, options: SipMessage, peer: Peer) -> None:
        reply = response_to(options, 200, "OK", "options")
        reply.headers += [("Allow", ALLOW), ("Accept", "application/sdp")]
        peer.send(reply)

    def _other(self, request: SipMessage, peer: Peer) -> None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is not None and request.method in ("NOTIFY", "INFO"):
            peer.send(response_to(request, 200, "OK", dialog.local_tag))  # a REFER's progress
        elif dialog is None and request.method in ("NOTIFY", "INFO"):
            peer.send(response_to(request, 481, "Call/Transaction Does Not Exist"))
        else:
            reply = response_to(request, 405, "Method Not Allowed", "refused")
            reply.headers.append(("Allow", ALLOW))
            peer.send(reply)

    def _pending_of(self, dialog: Dialog) -> Pending | None:
        return next((p for p in self.pending.values() if p.dialog is dialog), None)

    def _forget(self, dialog: Dialog) -> None:
        if self.dialogs.get(dialog.call_id) is dialog:
            del self.dialogs[dialog.call_id]
        dialog.stop()

    # -- the app's decisions -----------------------------------------------------------

    async def _announce(self, pending: Pending, url: str) -> None:
        """The webhook, then the app's decision within ``--sip-accept-timeout-s``."""
        event = incoming_event(pending.call_id, pending.dialog.invite.headers)
        try:
            await post_event(url, self.settings.sip_webhook_secret, event)
        except WebhookError as exc:
            log.warning("sip call %s: %s; the call is refused", pending.call_id, exc)
            if not pending.accepting:
                self._refuse(pending, 480, "Temporarily Unavailable")
            return
        try:
            async with asyncio.timeout(self.settings.sip_accept_timeout_s):
                await pending.decided.wait()
        except TimeoutError:
            if not pending.accepting and pending.call_id in self.pending:
                log.warning("sip call %s: neither accepted nor rejected", pending.call_id)
                self._refuse(pending, 480, "Temporarily Unavailable")

    async def _accept_default(self, pending: Pending) -> None:
        try:
            await self.accept(pending.call_id, None)
        except ApiError as exc:  # refused already, unless the session was at fault
            log.warning("sip call %s not accepted: %s", pending.call_id, exc.message)
            if pending.call_id in self.pending:
                self._refuse(pending, 500, "Server Internal Error")

    def _refuse(self, pending: Pending, status: int, reason: str) -> None:
        """A final error response for a pending call; the dialog is forgotten on its ACK
        (or when the response's retransmissions end)."""
        self.pending.pop(pending.call_id, None)
        pending.decided.set()
        dialog = pending.dialog
        if dialog.state is not DialogState.PENDING:
            return
        dialog.respond(status, reason)
        log_event(log, "sip.rejected", conn=pending.call_id, status=status)

        async def forget_later() -> None:
            await dialog.wait_ack()
            self._forget(dialog)

        self._spawn(forget_later())

    def holds(self, call_id: str) -> bool:
        """Whether the call is here: waiting for a decision, or accepted."""
        return call_id in self.pending or isinstance(self.edge.calls.get(call_id), SipCall)

    def pending_call(self, call_id: str) -> Pending:
        pending = self.pending.get(call_id)
        if pending is None:
            raise ApiError(404, f"No incoming call '{call_id}' is waiting.", "call_not_found")
        if pending.accepting:
            raise ApiError(409, f"Call '{call_id}' is being accepted.", "call_already_accepted")
        return pending

    def reject(self, call_id: str, status: int) -> None:
        self._refuse(self.pending_call(call_id), status, _REASONS.get(status, "Declined"))

    async def accept(self, call_id: str, session: dict[str, Any] | None) -> SipCall:
        """Admit the call's session, open its RTP port and answer 200 OK; ``ApiError``
        (the call is then refused, unless only the session was at fault)."""
        pending = self.pending_call(call_id)
        try:
            config = phone_session(
                self.settings.sip_session, session, codec=_CODECS[pending.offer.codec]
            )
        except ClientError as exc:
            raise ApiError(400, exc.message, exc.code or "invalid_value", param=exc.param) from None
        pending.accepting = True
        spec = call_spec(config, Transport.SIP, conn=call_id)
        try:
            admission = await admit_call(self.edge, spec, pending.holder)
        except (Refused, ApiError) as exc:
            self._refuse(pending, 486 if exc.status == 429 else 503, "Busy Here")
            raise
        try:  # a session the transceiver refuses: a 400, and the call keeps waiting
            first = await first_event(admission.upstream)
            if self.edge.live.draining:  # began while the session started
                raise draining()
        except BaseException:
            pending.accepting = False
            with contextlib.suppress(Exception):
                await admission.close()
            raise
        if pending.dialog.state is not DialogState.PENDING:  # the caller gave up meanwhile
            await admission.close()
            raise _hung_up(call_id)
        call = self._new_call(pending, admission, first)
        try:
            await open_rtp(self.host, self.rtp_ports, call.rtp)
        except (NoRtpPort, OSError) as exc:
            log.warning("sip call %s: %s", call_id, exc)
            self._refuse(pending, 503, "Service Unavailable")
            await call.close()
            raise ApiError(503, "No RTP port is free for this call.", "no_rtp_port") from None
        if pending.dialog.state is not DialogState.PENDING:  # a CANCEL or BYE meanwhile
            call.rtp.close()  # (a BYE's close may have run before the socket was there)
            await call.close()
            raise _hung_up(call_id)
        self.pending.pop(call_id, None)
        pending.decided.set()
        dialog = pending.dialog
        answer = sdp.answer(pending.offer, dialog.address, call.rtp.port, call.rtp.ssrc)
        dialog.respond(200, "OK", answer.encode(), "application/sdp")
        call.start()
        log_event(log, "sip.accepted", conn=call_id, rtp_port=call.rtp.port)
        self._spawn(self._confirm(dialog, call))
        return call

    def _new_call(
        self, pending: Pending, admission: Admission, first: str | bytes | None
    ) -> SipCall:
        dialog = pending.dialog

        def closed(call: Call) -> None:
            self.edge.calls.drop(call)
            if self.calls.get(dialog.call_id) is call:
                del self.calls[dialog.call_id]
            admission.release()
            if dialog.state in (DialogState.ANSWERED, DialogState.CONFIRMED):  # 200 OK sent
                self._spawn(self._hang_up(dialog, call.id))

        call = SipCall(
            pending.call_id,
            dialog.call_id,
            admission.upstream,
            closed,
            pending.offer,
            self.settings.sip_rtp_timeout_s,
            self.settings.webrtc_max_pending_audio_s,
            admission.rates,
            first,
        )

        async def close_for_drain() -> None:
            await call.broadcast(self.edge.error_event(SHUTDOWN_MESSAGE, "server_shutting_down"))
            await call.close()

        self.edge.calls.add(call)
        self.calls[dialog.call_id] = call
        admission.on_drain(close_for_drain)
        return call

    async def _confirm(self, dialog: Dialog, call: SipCall) -> None:
        """RFC 3261 section 13.3.1.4: no ACK for the 200 OK within 64*T1 ends the call."""
        if not await dialog.wait_ack() and not call.closed.is_set():
            log.info("sip call %s: no ACK for its 200 OK", call.id)
            await call.close()

    async def _hang_up(self, dialog: Dialog, call_id: str) -> None:
        log_event(log, "sip.bye", conn=call_id, by="server")
        await dialog.bye()
        self._forget(dialog)

    async def refer(self, call_id: str, target_uri: str) -> None:
        """Transfer the caller (REFER, RFC 3515); ``ApiError`` if the caller refuses or
        does not answer."""
        call = self.edge.calls.get(call_id)
        dialog = self.dialogs.get(call.dialog_id) if isinstance(call, SipCall) else None
        if call is None or dialog is None:
            raise ApiError(404, f"Call '{call_id}' not found.", "call_not_found")
        reply = await dialog.request(
            "REFER", [("Refer-To", f"<{target_uri}>"), ("Referred-By", dialog.contact)]
        )
        if reply is None:
            raise ApiError(504, "The caller did not answer the transfer.", "refer_timeout")
        log_event(log, "sip.refer", conn=call_id, status=reply.status)
        if reply.status >= 300:
            raise ApiError(
                409, f"The caller refused the transfer ({reply.status}).", "refer_refused"
            )


_REASONS = {
    404: "Not Found",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    488: "Not Acceptable Here",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}
