"""A small SIP phone over UDP for the tests: INVITE with a G.711 offer, ACK, BYE, answers
to the server's BYE and REFER, RTP audio and RFC 4733 key presses, all on loopback.

Written from RFC 3261 (not with the relay's SIP code), so it checks the relay's messages
as an independent phone would.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from typing import cast

from models.audio import resample, ulaw_decode, ulaw_encode

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
DTMF_PT = 101


def _parse(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return lines[0], headers, body


class Message:
    def __init__(self, data: bytes) -> None:
        self.start, self.headers, self.body = _parse(data)
        self.raw = data

    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1]) if self.start.startswith("SIP/2.0") else 0

    @property
    def method(self) -> str:
        return "" if self.start.startswith("SIP/2.0") else self.start.split(" ")[0]


class _Sip(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(Message(data))


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 12 and data[0] >> 6 == 2:
            self.payloads.append(data[12:])


class SipPhone:
    """One call from 127.0.0.1 to the relay's SIP port."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.call_id = secrets.token_hex(8) + "@test"
        self.tag = secrets.token_hex(4)
        self.cseq = 1
        self.remote_to = ""
        self.rtp_remote: tuple[str, int] | None = None
        self.requests: asyncio.Queue[Message] = asyncio.Queue()
        self._seq = 0
        self._ts = 0
        self._ssrc = secrets.randbits(32)
        self._invite_branch = ""
        self.other_responses: list[Message] = []

    async def open(self) -> SipPhone:
        loop = asyncio.get_running_loop()
        sip, self._sip = await loop.create_datagram_endpoint(_Sip, local_addr=("127.0.0.1", 0))
        rtp, self._media = await loop.create_datagram_endpoint(_Rtp, local_addr=("127.0.0.1", 0))
        self.sip_transport = cast(asyncio.DatagramTransport, sip)
        self.rtp_transport = cast(asyncio.DatagramTransport, rtp)
        self.port = self.sip_transport.get_extra_info("sockname")[1]
        self.rtp_port = self.rtp_transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        self.sip_transport.close()
        self.rtp_transport.close()

    def _send(self, text: str, body: str = "") -> None:
        data = text.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n\r\n" + body
        self.sip_transport.sendto(data.encode(), self.server)

    def _head(self, method: str, cseq: int, to: str, branch: str) -> str:
        return (
            f"{method} sip:agent@127.0.0.1:{self.server[1]} SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\n"
            "Max-Forwards: 70\n"
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}\n"
            f"To: {to}\n"
            f"Call-ID: {self.call_id}\n"
            f"CSeq: {cseq} {method}\n"
            f"Contact: <sip:caller@127.0.0.1:{self.port}>\n"
        )

    def offer(self) -> str:
        return (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 {DTMF_PT}\r\n"
            f"a=rtpmap:0 PCMU/8000\r\na=rtpmap:{DTMF_PT} telephone-event/8000\r\n"
            "a=sendrecv\r\n"
        )

    async def next_message(self, timeout_s: float = 15.0) -> Message:
        """The next response; requests from the server go to ``requests``."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self._sip.queue.get()
                if message.status:
                    return message
                self.requests.put_nowait(message)

    async def invite(
        self, extra: str = "", offer: str | None = None, timeout_s: float = 15.0
    ) -> tuple[list[int], Message]:
        """INVITE; the provisional statuses seen and the final response (ACKed)."""
        branch = "z9hG4bK" + secrets.token_hex(6)
        self._invite_branch = branch
        head = self._head("INVITE", self.cseq, "<sip:agent@127.0.0.1>", branch)
        body = self.offer() if offer is None else offer
        self._send(head + extra + "Content-Type: application/sdp\n", body)
        provisional: list[int] = []
        while True:
            response = await self.next_message(timeout_s)
            if not response.headers.get("cseq", "").endswith("INVITE"):
                self.other_responses.append(response)  # a CANCEL's, say
                continue
            if response.status < 200:
                provisional.append(response.status)
                continue
            break
        self.remote_to = response.headers["to"]
        ack_branch = branch if response.status >= 300 else "z9hG4bK" + secrets.token_hex(6)
        self._send(self._head("ACK", self.cseq, self.remote_to, ack_branch))
        if response.status == 200:
            self.rtp_remote = _rtp_address(response.body.decode())
        return provisional, response

    def cancel(self) -> None:
        """CANCEL the INVITE in progress (its branch and CSeq number, RFC 3261 9.1)."""
        to = "<sip:agent@127.0.0.1>"
        self._send(self._head("CANCEL", self.cseq, to, self._invite_branch))

    async def options(self) -> Message:
        branch = "z9hG4bK" + secrets.token_hex(6)
        self._send(self._head("OPTIONS", 1, "<sip:agent@127.0.0.1>", branch))
        return await self.next_message()

    async def bye(self) -> Message:
        self.cseq += 1
        branch = "z9hG4bK" + secrets.token_hex(6)
        self._send(self._head("BYE", self.cseq, self.remote_to, branch))
        return await self.next_message()

    async def request_from_server(self, method: str, timeout_s: float = 15.0) -> Message:
        """Wait for the server's ``method`` request, and answer it (200, or 202 for REFER)."""
        async with asyncio.timeout(timeout_s):
            while True:
                if self.requests.empty():
                    message = await self._sip.queue.get()
                    if message.status:
                        continue
                else:
                    message = self.requests.get_nowait()
                self.answer(message, 202 if message.method == "REFER" else 200)
                if message.method == method:
                    return message

    def answer(self, request: Message, status: int) -> None:
        reason = {200: "OK", 202: "Accepted"}.get(status, "Error")
        lines = [f"SIP/2.0 {status} {reason}"]
        raw = request.raw.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
        for line in raw:
            name = line.partition(":")[0].strip().lower()
            if name in ("via", "from", "to", "call-id", "cseq"):
                lines.append(line)
        data = "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"
        self.sip_transport.sendto(data.encode(), self.server)

    # -- media -------------------------------------------------------------------------

    def _packet(self, payload_type: int, payload: bytes, marker: bool = False) -> None:
        assert self.rtp_remote is not None
        head = struct.pack(
            "!BBHII", 0x80, payload_type | (0x80 if marker else 0), self._seq, self._ts, self._ssrc
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self.rtp_transport.sendto(head + payload, self.rtp_remote)

    async def speak(self, pcm16_24k: bytes) -> None:
        """Send audio as 20 ms mu-law RTP packets in real time."""
        mulaw = ulaw_encode(resample(pcm16_24k, 24000, 8000))
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(mulaw), FRAME_BYTES)):
            self._packet(0, mulaw[offset : offset + FRAME_BYTES])
            self._ts += FRAME_BYTES
            delay = start + (index + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def press(self, key: str) -> None:
        """An RFC 4733 key press: start, update and three end packets, one timestamp."""
        event = "0123456789*#ABCD".index(key)
        for index, (end, duration) in enumerate([(0, 160), (0, 320), (1, 480), (1, 480), (1, 480)]):
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
            self._packet(DTMF_PT, payload, marker=index == 0)
        self._ts += 480

    def heard(self) -> bytes:
        """What the phone received, decoded to PCM16 8 kHz."""
        return ulaw_decode(b"".join(self._media.payloads))


def _rtp_address(sdp: str) -> tuple[str, int]:
    host, port = "", 0
    for line in sdp.splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return host, port
