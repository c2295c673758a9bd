"""The SIP endpoint's parsers on any input: they refuse with their own error, never crash
(relay/sip/message.py, sdp.py, rtp.py); and what they accept round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.audio import alaw_encode, ulaw_encode
from relay.sip import sdp
from relay.sip.message import SipMessage, SipParseError, parse, response_to, tag_of, uri_of
from relay.sip.rtp import G711, DtmfReceiver, RtpPacket, parse_rtp

INVITE = (
    b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b'f: "Ann" <sip:ann@127.0.0.1>;tag=a1\r\n'
    b"t: <sip:agent@127.0.0.1>\r\n"
    b"i: abc@127.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"X-Folded: one\r\n two\r\n"
    b"l: 4\r\n\r\nbodyEXTRA"
)
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        parse(data)
    except SipParseError:
        pass
    assert parse_rtp(data) is None or isinstance(parse_rtp(data), RtpPacket)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_any_sdp_is_answered_or_refused(text: str) -> None:
    try:
        offer = sdp.parse_offer(text)
    except sdp.SdpError:
        return
    assert offer.codec in ("PCMU", "PCMA") and 0 < offer.port < 65536


def test_a_message_with_compact_and_folded_headers() -> None:
    message = parse(INVITE)
    assert message.method == "INVITE" and message.call_id == "abc@127.0.0.1"
    assert message.cseq == (7, "INVITE") and message.body == b"body"
    assert message.get("X-Folded") == "one two"
    assert (
        tag_of(message.get("From")) == "a1" and uri_of(message.get("From")) == "sip:ann@127.0.0.1"
    )
    reply = response_to(message, 200, "OK", "z9")
    again = parse(reply.to_bytes())
    assert again.status == 200 and tag_of(again.get("To")) == "z9"
    assert again.get("Via") == message.get("Via") and again.cseq == (7, "INVITE")
    assert isinstance(again, SipMessage) and not again.is_request


def test_the_answer_takes_the_first_g711_and_telephone_events() -> None:
    offer = sdp.parse_offer(
        "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 9 8 0 96\r\n"
        "a=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n"
    )
    assert (offer.address, offer.port, offer.codec) == ("192.0.2.1", 4000, "PCMA")
    answer = sdp.answer(offer, "198.51.100.2", 40000, 1)
    assert "m=audio 40000 RTP/AVP 8 96" in answer and "a=recvonly" in answer
    assert "c=IN IP4 198.51.100.2" in answer


def test_g711_matches_the_models_codec() -> None:
    pcm = bytes(range(256)) * 40
    assert G711("PCMU").encode(pcm) == ulaw_encode(pcm)
    assert G711("PCMA").encode(pcm) == alaw_encode(pcm)


def test_a_key_press_is_one_event_however_many_packets() -> None:
    dtmf = DtmfReceiver()
    packets = [
        RtpPacket(101, n, 1000, 1, bytes([11, 0x80 if n > 1 else 0, 0, 160])) for n in range(5)
    ]
    assert [dtmf.receive(p) for p in packets] == ["#", None, None, None, None]
    assert dtmf.receive(RtpPacket(101, 6, 2000, 1, bytes([1, 0, 0, 160]))) == "1"
    assert parse_rtp(packets[0].to_bytes()) == packets[0]


def test_numbers_are_ascii_digits() -> None:
    """``str.isdigit`` takes "²" and "٤": refused here with the parsers' own errors."""
    for status in ("²²²", "٤٠٤"):
        with pytest.raises(SipParseError):
            parse(f"SIP/2.0 {status} OK\r\n\r\n".encode())
    with pytest.raises(SipParseError):
        parse(INVITE.replace(b"l: 4", "l: ٤".encode()))
    offer = OFFER.replace("m=audio 4000 ", "m=audio ² ")
    with pytest.raises(sdp.SdpError):
        sdp.parse_offer(offer)
    assert sdp.parse_offer(OFFER.replace(" 0\r\n", " ٠ 0\r\n")).payload_type == 0


def test_an_offer_names_an_ip_address() -> None:
    with pytest.raises(sdp.SdpError, match="not an IP address"):
        sdp.parse_offer(OFFER.replace("IN IP4 127.0.0.1", "IN IP4 phone.example"))
    with pytest.raises(sdp.SdpError, match="not an IP address"):  # a scope: the caller's
        sdp.parse_offer(OFFER.replace("IN IP4 127.0.0.1", "IN IP6 fe80::1%eth0"))
    assert sdp.parse_offer(OFFER.replace("IN IP4 127.0.0.1", "IN IP6 ::1")).ip_version == 6
    assert sdp.parse_offer(OFFER).ip_version == 4
