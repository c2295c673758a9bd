"""The SIP endpoint (relay/sip/endpoint.py) under a caller that does not play along: a
CANCEL while the call's RTP port opens, dialogs never ACKed, a TCP peer that never reads.
An in-process relay and fake transceiver; the endpoint listens on a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator

import pytest

import relay.sip.endpoint as endpoint_module
import relay.sip.transport as transport_module
from relay.sip import sdp
from relay.sip.call import MAX_PENDING_KEYS, SipCall
from relay.sip.endpoint import SipEndpoint, _unmapped
from relay.sip.media import RtpStream, open_rtp
from relay.sip.message import parse
from relay.sip.rtp import RtpPacket
from relay.sip.transport import MAX_TCP_UNSENT_BYTES
from tests.e2e.sip_client import SipPhone
from tests.relay.inprocess import (
    REFUSED_INSTRUCTIONS,
    RunningRelay,
    fake_transceiver,
    running_relay,
)
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

# More than the kernel's buffers on both ends of a loopback connection (a send buffer
# grows to 4 MiB by default, net.ipv4.tcp_wmem) and the endpoint's own limit.
ENOUGH = 16 * 1024 * 1024 + MAX_TCP_UNSENT_BYTES


@contextlib.asynccontextmanager
async def sip_endpoint(**settings: str) -> AsyncIterator[tuple[RunningRelay, SipEndpoint]]:
    async with fake_transceiver() as fake:
        async with running_relay([fake], sip_listen="127.0.0.1:0", **settings) as relay:
            sip = SipEndpoint(relay.edge)
            await sip.start()
            try:
                yield relay, sip
            finally:
                await sip.stop()


def _invite(call_id: str, rtp_port: int, address: str = "IP4 127.0.0.1") -> bytes:
    body = (
        f"v=0\r\no=- 1 1 IN {address}\r\ns=-\r\nc=IN {address}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\n"
    )
    head = (
        "INVITE sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id}\r\n"
        "From: <sip:caller@127.0.0.1>;tag=c1\r\nTo: <sip:agent@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


async def test_a_cancel_while_the_rtp_port_opens_ends_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller gives up between the session's admission and the RTP port: 487, never
    a 200 after it, and the admitted session is closed."""
    opening, go_on = asyncio.Event(), asyncio.Event()

    async def slow_open_rtp(host: str, ports: tuple[int, int] | None, stream: RtpStream) -> None:
        opening.set()
        await go_on.wait()
        await open_rtp(host, ports, stream)

    monkeypatch.setattr(endpoint_module, "open_rtp", slow_open_rtp)
    async with sip_endpoint() as (relay, sip):
        phone = await SipPhone(sip.port).open()
        try:
            invite = asyncio.create_task(phone.invite())
            await eventually(opening.is_set, what="the RTP port opening")
            (dialog,) = sip.dialogs.values()
            phone.cancel()
            _, final = await invite
            assert final.status == 487
            go_on.set()
            await eventually(lambda: not sip._tasks, what="the accept's end")
            assert dialog.final is not None and dialog.final.status == 487
            assert not sip.calls and not sip.pending
            await relay.idle()
        finally:
            phone.close()


async def test_a_session_the_transceiver_refuses_is_no_call() -> None:
    """Accepted with a session the transceiver refuses (the fake's, for these
    instructions), the INVITE gets a final error: before, a 200 OK and then a BYE at once,
    with the session's error lost (a phone has no data channel)."""
    async with sip_endpoint(sip_session=json.dumps({"instructions": REFUSED_INSTRUCTIONS})) as (
        relay,
        sip,
    ):
        phone = await SipPhone(sip.port).open()
        try:
            _, final = await phone.invite()
            assert final.status == 500
            assert not sip.calls and not sip.pending
            await relay.idle()
        finally:
            phone.close()


async def test_dialogs_never_acked_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused INVITE's dialog waits for its ACK; a caller that never sends one holds
    no more than MAX_IDLE_DIALOGS: the oldest are forgotten, and new callers still get
    their answer."""
    monkeypatch.setattr(endpoint_module, "MAX_IDLE_DIALOGS", 3)
    with socket.socket() as closed:  # the webhook's port: bound, not listening (refused)
        closed.bind(("127.0.0.1", 0))
        hook = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        async with sip_endpoint(sip_webhook_url=hook) as (_, sip):
            loop = asyncio.get_running_loop()
            with socket.socket(type=socket.SOCK_DGRAM) as caller:
                caller.bind(("127.0.0.1", 0))
                caller.setblocking(False)
                finals, first = [], None
                for index in range(6):
                    call_id = f"c{index}"
                    await loop.sock_sendto(caller, _invite(call_id, 4000), ("127.0.0.1", sip.port))
                    while True:  # this INVITE's final response (others' are resent meanwhile)
                        reply = parse(await loop.sock_recv(caller, 65536))
                        if reply.call_id == call_id and reply.status >= 200:
                            break
                    finals.append(reply.status)
                    first = first or sip.dialogs["c0"]
                    assert len(sip.dialogs) <= 3
            assert finals == [480] * 6
            assert sorted(sip.dialogs) == ["c3", "c4", "c5"]
            assert first is not None and first.acked.is_set()  # nothing waits on it now


async def test_a_tcp_peer_that_reads_nothing_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    """Responses a TCP peer leaves unread are bounded: past MAX_TCP_UNSENT_BYTES its
    connection is dropped (with what it holds)."""
    caplog.set_level(logging.WARNING, "relay.sip.transport")
    async with sip_endpoint() as (_, sip):
        loop = asyncio.get_running_loop()
        with socket.socket() as peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peer.setblocking(False)
            await loop.sock_connect(peer, ("127.0.0.1", sip.port))
            # Each OPTIONS is answered with its long Via copied back.
            via = "Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK" + "a" * 30_000 + "\r\n"
            options = (
                f"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n{via}From: <sip:a@127.0.0.1>;tag=1\r\n"
                "To: <sip:agent@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < ENOUGH:
                    async with asyncio.timeout(10):
                        await loop.sock_sendall(peer, options)
                    sent += len(options)
        assert sent < ENOUGH  # cut off on the way
        assert any("reads none of its responses" in r.getMessage() for r in caplog.records)


async def test_one_address_holds_its_share_of_tcp_connections_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_TCP_CONNECTIONS_PER_ADDRESS from one IP address a new connection is closed
    at once; another address (127.0.0.2: loopback too) still gets in, and a connection that
    ends makes room again."""
    monkeypatch.setattr(transport_module, "MAX_TCP_CONNECTIONS_PER_ADDRESS", 3)
    async with sip_endpoint() as (_, sip):
        held = sip.transports._connections

        async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", sip.port, local_addr=(source, 0))

        first = [await connect("127.0.0.1") for _ in range(3)]
        await eventually(lambda: len(held) == 3, what="three connections taken")
        refused, refused_writer = await connect("127.0.0.1")
        async with asyncio.timeout(5):
            assert await refused.read() == b""  # closed by the endpoint
        refused_writer.close()
        other = await connect("127.0.0.2")
        await eventually(lambda: len(held) == 4, what="another address's connection taken")
        first[0][1].close()
        await eventually(lambda: len(held) == 3, what="a closed connection gone")
        again = await connect("127.0.0.1")
        await eventually(lambda: len(held) == 4, what="room again for 127.0.0.1")
        assert sip.transports._per_address == {"127.0.0.1": 3, "127.0.0.2": 1}
        for _, writer in [*first[1:], other, again]:
            writer.close()
        await eventually(lambda: not sip.transports._per_address, what="all counted out")


async def test_stopping_with_a_tcp_connection_open_ends_it_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its handler's read ends (not a cancelled task, which asyncio logs as an error)."""
    async with sip_endpoint() as (_, sip):
        reader, writer = await asyncio.open_connection("127.0.0.1", sip.port)
        await eventually(lambda: sip.transports._connections, what="the connection taken")
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_rtp_takes_the_learnt_source_and_the_sdps_address_only() -> None:
    """No socket: datagrams handed to the stream as the loop would (addresses as data)."""
    taken: list[int] = []
    stream = RtpStream(("192.0.2.10", 4000), 0, lambda p: taken.append(p.sequence), 101)
    nat, sdp_address, stranger = ("198.51.100.7", 30000), ("192.0.2.10", 4000), ("203.0.113.9", 1)

    def packet(sequence: int, payload_type: int = 0) -> bytes:
        return RtpPacket(payload_type, sequence, 0, 1, b"\xff" * 160).to_bytes()

    stream.datagram_received(packet(1, payload_type=13), stranger)  # not negotiated: ignored
    stream.datagram_received(packet(2), nat)  # the first: learnt
    stream.datagram_received(packet(3), stranger)
    stream.datagram_received(packet(4, payload_type=101), stranger)
    assert (taken, stream.remote, stream.strangers) == ([2], nat, 2)
    stream.datagram_received(packet(5), sdp_address)  # the SDP's address is the caller's too
    assert stream.remote == sdp_address
    stream.datagram_received(packet(6), nat)  # and does not shut the learnt source out
    assert (taken, stream.remote) == ([2, 5, 6], nat)
    # A refresh (the same address) and a hold (no address) change nothing.
    stream.move(("192.0.2.10", 4000))
    stream.move(("0.0.0.0", 4000))
    stream.datagram_received(packet(9), stranger)
    assert (stream.remote, stream.offered, stream.strangers) == (nat, sdp_address, 3)
    # A re-INVITE moving the media: learnt again (an IPv4 caller on a dual-stack socket).
    stream.move(("::ffff:192.0.2.20", 5000))
    assert stream.offered == stream.remote == ("::ffff:192.0.2.20", 5000)
    stream.datagram_received(packet(7), ("::ffff:198.51.100.8", 31000))
    stream.datagram_received(packet(8), nat)
    assert (taken[-1], stream.remote, stream.strangers) == (7, ("::ffff:198.51.100.8", 31000), 4)


async def test_a_reinvite_that_moves_the_media_moves_the_rtp() -> None:
    async with sip_endpoint() as (relay, sip):
        phone = await SipPhone(sip.port).open()
        try:
            _, answer = await phone.invite()
            assert answer.status == 200
            (call,) = sip.calls.values()
            assert call.rtp.offered == ("127.0.0.1", phone.rtp_port)
            phone.cseq += 1
            moved = phone.offer().replace(f"m=audio {phone.rtp_port} ", "m=audio 4002 ")
            head = phone._head("INVITE", phone.cseq, phone.remote_to, "z9hG4bKmoved")
            phone._send(head + "Content-Type: application/sdp\n", moved)
            again = await phone.next_message()
            while again.headers["cseq"] != f"{phone.cseq} INVITE":  # a late resent 200
                again = await phone.next_message()
            assert (again.status, again.body) == (200, answer.body)  # the same answer
            assert call.rtp.offered == call.rtp.remote == ("127.0.0.1", 4002)
            assert (await phone.bye()).status == 200
            await relay.idle()
        finally:
            phone.close()


async def test_listening_on_every_ipv6_address_takes_ipv4_callers_too() -> None:
    """``::`` is a dual-stack socket: an IPv4 offer is reached at its mapped address (the
    endpoint is not started: nothing listens beyond loopback)."""
    async with fake_transceiver() as fake, running_relay([fake], sip_listen="[::]:0") as relay:
        sip = SipEndpoint(relay.edge)
        offer = sip._offer_of(parse(_invite("v4", 4000)))
        assert (offer.address, offer.ip_version) == ("::ffff:127.0.0.1", 6)
        # The caller's address as --sip-allow and the answer see it: IPv4.
        assert _unmapped("::ffff:192.0.2.1") == "192.0.2.1" and _unmapped("::1") == "::1"
    async with fake_transceiver() as fake:
        async with running_relay([fake], sip_listen="127.0.0.1:0") as relay:
            sip = SipEndpoint(relay.edge)
            v6 = _invite("v6", 4000, "IP6 ::1")
            with pytest.raises(sdp.SdpError, match="IPv6, RTP here IPv4"):
                sip._offer_of(parse(v6))


class _Upstream:
    """The session side of a call that is never started: nothing comes, sends are kept."""

    async def send(self, message: str | bytes) -> None:
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None


async def test_key_presses_wait_in_order_and_a_flood_is_bounded() -> None:
    """Sidebands slower than the caller's key presses: at most MAX_PENDING_KEYS wait (the
    rest are dropped and counted), and they reach the sideband one at a time, in order."""
    offer = sdp.Offer("127.0.0.1", 4000, 0, 101, "sendrecv")
    call = SipCall("rtc_keys", "keys@test", _Upstream(), lambda c: None, offer, 20.0, 60.0)  # type: ignore[arg-type]
    gate, heard = asyncio.Event(), []

    async def slow_sideband(text: str) -> None:
        await gate.wait()
        heard.append(json.loads(text)["event"])

    call.sidebands.add(slow_sideband)
    call._spawn(call._send_keys())
    presses = MAX_PENDING_KEYS + 36
    for index in range(presses):  # one packet each, a new event (timestamp) each
        payload = bytes([index % 10, 0x8A, 0, 160])
        call.on_packet(RtpPacket(101, index, 160 * index, 1, payload))
    assert (call.dtmf_count, call.dropped_packets) == (presses, 36)
    gate.set()
    await eventually(lambda: len(heard) == MAX_PENDING_KEYS, what="the keys sent")
    assert heard == [str(index % 10) for index in range(MAX_PENDING_KEYS)]
    await call.close()


async def test_a_short_datagram_and_a_bye_while_ringing_are_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request whose body is shorter than its Content-Length gets 400 (RFC 3261 section
    18.3); a BYE while the INVITE waits for the app's decision gets 200, and the INVITE
    its 487 (section 15.1.2)."""

    async def delivered(*args: object) -> None:  # the webhook: the app will decide later
        return None

    monkeypatch.setattr(endpoint_module, "post_event", delivered)
    async with sip_endpoint(sip_webhook_url="http://127.0.0.1:9/unused") as (_, sip):
        loop = asyncio.get_running_loop()
        with socket.socket(type=socket.SOCK_DGRAM) as caller:
            caller.bind(("127.0.0.1", 0))
            caller.setblocking(False)
            to_sip = ("127.0.0.1", sip.port)

            async def final(call_id: str, method: str) -> int:
                async with asyncio.timeout(10):
                    while True:
                        reply = parse(await loop.sock_recv(caller, 65536))
                        if (reply.call_id, reply.cseq[1]) == (call_id, method):
                            if reply.status >= 200:
                                return reply.status

            short = _invite("short", 4000).replace(b"Content-Length: ", b"Content-Length: 9")
            await loop.sock_sendto(caller, short, to_sip)
            assert await final("short", "INVITE") == 400
            await loop.sock_sendto(caller, _invite("ringing", 4000), to_sip)
            await eventually(lambda: sip.pending, what="the call waiting for the app")
            bye = (
                _invite("ringing", 4000)
                .split(b"\r\n\r\n")[0]
                .replace(b"INVITE sip:", b"BYE sip:")
                .replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE")
                .replace(b"Content-Type: application/sdp\r\n", b"")
            )
            bye = bye.split(b"Content-Length:")[0] + b"Content-Length: 0\r\n\r\n"
            await loop.sock_sendto(caller, bye, to_sip)
            assert await final("ringing", "BYE") == 200
            assert await final("ringing", "INVITE") == 487
            assert not sip.pending
        # Over TCP the head is parsed before the body is read: a body is no truncation.
        reader, writer = await asyncio.open_connection(*to_sip)
        writer.write(_invite("over-tcp", 4000).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"SIP/2.0 100 Trying") and b"Call-ID: over-tcp" in head
        writer.close()
        await writer.wait_closed()
