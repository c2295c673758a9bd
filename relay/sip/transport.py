"""SIP over UDP and TCP (RFC 3261 section 18): one listener of each on ``--sip-listen``.

Each message goes to :meth:`Receiver.receive` with the :class:`Peer` it came from; a reply
(and any later request in the same dialog) goes back through that peer: the datagram's
source address on UDP (symmetric, as RFC 3581 ``rport`` asks, which also crosses NATs), the
same connection on TCP. A datagram or stream frame that is not a SIP message is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol, cast

from relay.sip.message import (
    SipMessage,
    SipParseError,
    SipTruncated,
    content_length,
    parse,
    response_to,
)

log = logging.getLogger(__name__)

MAX_TCP_CONNECTIONS = 256
# From one IP address, so that one host cannot take every connection from the others.
MAX_TCP_CONNECTIONS_PER_ADDRESS = 32
TCP_IDLE_TIMEOUT_S = 600.0  # a connection with no message for this long is closed
# Responses a TCP peer has not read; past this the peer is not reading and is cut off.
MAX_TCP_UNSENT_BYTES = 256 * 1024
CLOSE_TIMEOUT_S = 5.0  # for the responses still unsent when a connection is closed


class Peer(Protocol):
    transport: str  # "UDP" or "TCP"
    address: tuple[str, int]

    def send(self, message: SipMessage) -> None: ...


class Receiver(Protocol):
    def receive(self, message: SipMessage, peer: Peer) -> None: ...


class UdpPeer:
    transport = "UDP"

    def __init__(self, udp: asyncio.DatagramTransport, address: tuple[str, int]) -> None:
        self._udp = udp
        self.address = address

    def send(self, message: SipMessage) -> None:
        if not self._udp.is_closing():
            self._udp.sendto(message.to_bytes(), self.address)


class TcpPeer:
    transport = "TCP"

    def __init__(self, writer: asyncio.StreamWriter, address: tuple[str, int]) -> None:
        self._writer = writer
        self.address = address

    def send(self, message: SipMessage) -> None:
        writer = self._writer
        if writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_TCP_UNSENT_BYTES:
            log.warning(
                "sip: %s reads none of its responses; its connection is closed", self.address[0]
            )
            writer.transport.abort()  # close() would wait for the unread responses
            return
        writer.write(message.to_bytes())


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip() or self.transport is None:
            return  # RFC 5626 keep-alive (CRLF)
        peer = UdpPeer(self.transport, (addr[0], addr[1]))
        try:
            message = parse(data, datagram=True)
        except SipTruncated as exc:
            request = exc.message  # answerable: a request (no ACK) with what a reply copies
            headers = ("Via", "From", "To", "CSeq", "Call-ID")
            if request.method not in ("", "ACK") and all(request.get(h) for h in headers):
                peer.send(response_to(request, 400, "Bad Request", "refused"))
            return
        except SipParseError as exc:
            log.debug("sip: dropped a datagram from %s: %s", addr[0], exc)
            return
        try:
            self.receiver.receive(message, peer)
        except Exception:  # a bug: logged, and the socket goes on
            log.exception("sip: a message from %s failed", addr[0])


class SipTransports:
    """The UDP socket and TCP server of one ``HOST:PORT``."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._per_address: Counter[str] = Counter()  # open connections by the peer's IP
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.receiver), local_addr=(host, port)
        )
        self._udp = udp
        self.port = udp.get_extra_info("sockname")[1]
        self._tcp = await asyncio.start_server(self._serve, host, self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        # Dropped, not cancelled: each handler's read ends and it returns (a handler task
        # cancelled has asyncio's start_server log an error).
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        name = writer.get_extra_info("peername")
        peer = TcpPeer(writer, (str(name[0]), int(name[1])))
        host = peer.address[0]
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            log.warning("sip: too many TCP connections; one from %s is refused", host)
            writer.close()
            return
        if self._per_address[host] >= MAX_TCP_CONNECTIONS_PER_ADDRESS:
            log.warning("sip: too many TCP connections from %s; one is refused", host)
            writer.close()
            return
        self._connections[task] = writer
        self._per_address[host] += 1
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT_S):
                    message = await _read_message(reader)
                if message is None:
                    return
                self.receiver.receive(message, peer)
        except (TimeoutError, SipParseError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("sip: TCP connection from %s ends: %r", peer.address[0], exc)
        except Exception:  # a bug: logged, and the connection is closed
            log.exception("sip: a TCP connection from %s failed", peer.address[0])
        finally:
            self._connections.pop(task, None)
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]
            writer.close()
            try:  # a peer that reads nothing would hold its responses, and this task, forever
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await writer.wait_closed()
            except Exception:
                writer.transport.abort()


async def _read_message(reader: asyncio.StreamReader) -> SipMessage | None:
    """The next message of a stream (CRLF keep-alives skipped); ``None`` at its end."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise
        except asyncio.LimitOverrunError:
            raise SipParseError("headers too large") from None
        head = head.lstrip(b"\r\n")
        if head.strip():
            break
    message = parse(head)
    length = content_length(message) or 0
    message.body = await reader.readexactly(length) if length else b""
    return message
