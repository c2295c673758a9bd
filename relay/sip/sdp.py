"""SDP offer/answer for a phone call (RFC 3264): one audio stream of G.711 over RTP.

The answer picks the first of the offer's payload types that is PCMU (0) or PCMA (8), and
RFC 4733 ``telephone-event`` at 8 kHz if offered (DTMF keys). An offer with neither G.711
codec cannot be answered (488 Not Acceptable Here).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from relay.sip.message import is_number

PCMU, PCMA = 0, 8
_STATIC = {PCMU: "PCMU", PCMA: "PCMA"}


class SdpError(ValueError):
    """An offer a G.711 call cannot answer."""


@dataclass(frozen=True)
class Offer:
    address: str  # where the caller receives RTP
    port: int
    payload_type: int  # the chosen G.711 payload type
    dtmf_payload_type: int | None
    direction: str  # sendrecv, sendonly, recvonly or inactive (the caller's view)
    ptime_ms: int = 20

    @property
    def codec(self) -> str:
        return _STATIC[self.payload_type]

    @property
    def ip_version(self) -> int:
        return ip_address(self.address).version


def parse_offer(text: str) -> Offer:
    """The caller's audio stream from an SDP offer; :class:`SdpError` if unusable."""
    session_addr = ""
    media_addr = ""
    port = -1
    formats: list[int] = []
    rtpmap: dict[int, str] = {}
    direction = "sendrecv"
    in_audio = False
    seen_audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            in_audio = line.startswith("m=audio ") and not seen_audio
            if in_audio:
                seen_audio = True
                fields = line[2:].split()
                if len(fields) < 4 or not is_number(fields[1].split("/")[0]):
                    raise SdpError("bad m=audio line")
                port = int(fields[1].split("/")[0])
                if fields[2] != "RTP/AVP":
                    raise SdpError(f"the audio stream's profile is {fields[2]}, not RTP/AVP")
                formats = [int(f) for f in fields[3:] if is_number(f)]
        elif line.startswith("c=IN IP4 ") or line.startswith("c=IN IP6 "):
            address = line.split()[2].split("/")[0]
            if in_audio:
                media_addr = address
            elif not seen_audio:
                session_addr = address
        elif in_audio and line.startswith("a=rtpmap:"):
            number, _, name = line[len("a=rtpmap:") :].partition(" ")
            if is_number(number):
                rtpmap[int(number)] = name.strip().lower()
        elif in_audio and line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"):
            direction = line[2:]
    if not seen_audio or not (0 < port < 65536):
        raise SdpError("the offer has no audio stream")
    chosen = next((f for f in formats if f in _STATIC), None)
    if chosen is None:
        raise SdpError("the offer has neither PCMU nor PCMA")
    dtmf = next((f for f in formats if rtpmap.get(f, "").startswith("telephone-event/8000")), None)
    address = media_addr or session_addr
    if not address:
        raise SdpError("the offer has no connection address")
    try:
        if "%" in address:  # a scope (fe80::1%eth0) names an interface of the caller's
            raise ValueError(address)
        ip_address(address)
    except ValueError:  # a name would need a lookup: RTP goes to an address
        raise SdpError(f"the offer's address {address!r} is not an IP address") from None
    return Offer(address, port, chosen, dtmf, direction)


def answer(offer: Offer, address: str, port: int, session_id: int) -> str:
    """The answer: our RTP address and port, the chosen codec, telephone-event if any."""
    formats = [str(offer.payload_type)]
    attrs = [f"a=rtpmap:{offer.payload_type} {offer.codec}/8000"]
    if offer.dtmf_payload_type is not None:
        formats.append(str(offer.dtmf_payload_type))
        attrs.append(f"a=rtpmap:{offer.dtmf_payload_type} telephone-event/8000")
        attrs.append(f"a=fmtp:{offer.dtmf_payload_type} 0-16")
    mine = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=realtime-relay {session_id} {session_id} IN {family} {address}",
        "s=realtime-relay",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(formats)}",
        *attrs,
        "a=ptime:20",
        f"a={mine.get(offer.direction, 'inactive')}",
    ]
    return "\r\n".join(lines) + "\r\n"
