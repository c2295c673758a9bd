"""A bounded fuzz of WebRTC offers (Hypothesis): ``POST /v1/realtime/calls`` and the beta
``POST /v1/realtime?model=``, with the offer raw or as the multipart ``sdp`` part, and
multipart forms of any shape (missing or repeated parts, wrong content types, binary junk,
huge lines, broken boundaries, any JSON as the ``session`` part).

Offers are a real aiortc offer with lines removed, replaced, inserted or cut, or junk after
``v=0``. Whatever comes in: never a 5xx; an error is OpenAI's JSON envelope
(https://platform.openai.com/docs/guides/error-codes); a refused offer places no session
(the fake transceiver saw none; no call, the WebRTC gauge at 0, and the relay's live
sessions, which ``/healthz`` counts, the bystander's only); an accepted one answers with
audio and is hung up; and a WebSocket session open the whole time (the bystander) still
answers after every request.

Traffic stays on loopback: every ICE candidate line the fuzz could send is removed but the
one on 127.0.0.1 (``loopback_only``), and the relay has no STUN or TURN servers.
Bounded: 100 + 100 examples, well under 30 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from tests.relay.inprocess import FakeTransceiver, RunningRelay, fake_transceiver, running_relay
from tests.relay.offers import CALLS, make_offer, silent_udp_port
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-fuzz-calls"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_OFFER_BYTES = 64 * 1024  # small, so that the fuzz reaches the 413 too
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the shared tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Served:
    relay: RunningRelay
    fake: FakeTransceiver
    http: httpx.AsyncClient
    bystander: ClientConnection
    offer: str  # a valid offer on loopback
    candidate: str  # its one candidate line, on 127.0.0.1


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    with silent_udp_port() as port:
        offer = await make_offer(port)
        candidate = next(line for line in offer.splitlines() if line.startswith("a=candidate"))
        async with (
            fake_transceiver() as fake,
            running_relay([fake], api_keys=[KEY], webrtc_max_offer_bytes=MAX_OFFER_BYTES) as relay,
        ):
            url = f"{relay.ws_url}?model=gpt-realtime"
            async with relay.http() as http, connect(url, additional_headers=AUTH) as bystander:
                created = json.loads(await asyncio.wait_for(bystander.recv(), 10))
                assert created["type"] == "session.created"
                yield Served(relay, fake, http, bystander, offer, candidate)


# -- strategies ----------------------------------------------------------------------

SDP_LINES = [
    "v=0", "o=- 0 0 IN IP4 0.0.0.0", "s=-", "t=0 0", "c=IN IP4 127.0.0.1", "c=IN IP6 ::1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "m=audio 0 UDP/TLS/RTP/SAVPF 96", "m=audio x y",
    "m=audio", "m=video 9 UDP/TLS/RTP/SAVPF 97", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=text 9 RTP/AVP 0", "a=inactive", "a=recvonly", "a=sendonly", "a=sendrecv",
    "a=rtpmap:96 opus/48000/2", "a=rtpmap:96", "a=rtpmap:x y", "a=rtpmap:0 PCMU/8000",
    "a=fmtp:96 minptime=10;useinbandfec=1", "a=rtcp-fb:96 nack", "a=rtcp-mux", "a=rtcp:x",
    "a=mid:0", "a=mid:", "a=group:BUNDLE 0 1 2 3", "a=group:", "a=msid:- -", "a=ssrc:x",
    "a=ssrc:1 cname:x", "a=ssrc-group:FID 1", "a=extmap:1 urn:x", "a=extmap:x",
    "a=setup:actpass", "a=setup:passive", "a=setup:junk", "a=fingerprint:sha-256 00:11",
    "a=fingerprint:junk", "a=ice-ufrag:", "a=ice-pwd:", "a=ice-lite", "a=sctp-port:x",
    "a=sctp-port:5000", "a=max-message-size:-1", "a=sctpmap:5000 webrtc-datachannel 1024",
    "a=end-of-candidates", "a=", "a", "=", "", " ", "\x00", "x=y",
]  # fmt: skip
junk_lines = st.one_of(
    st.sampled_from(SDP_LINES),
    st.text(max_size=40),  # any characters: line breaks, NUL, surrogates' neighbours
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "replace")),
    st.integers(1, 2 * MAX_OFFER_BYTES).map(lambda n: "a=" + "x" * n),  # huge lines
)
separators = st.sampled_from(["\r\n", "\n", "\r"])


def loopback_only(text: str, candidate: str) -> str:
    """``text`` without any line (as aiortc splits them: ``str.splitlines``) that could name
    an ICE candidate, except ``candidate`` on 127.0.0.1: the relay dials nothing else."""
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if "candidate" not in line.lower() or line.rstrip("\r\n") == candidate
    ]
    return "".join(kept)


@st.composite
def mutated_offers(draw: st.DrawFn, offer: str) -> str:
    """``offer`` with one to six lines removed, replaced, inserted or repeated, or cut."""
    lines = offer.splitlines()
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        action = draw(st.sampled_from(["remove", "replace", "insert", "repeat", "cut"]))
        if action == "remove" and lines:
            del lines[index]
        elif action == "replace" and lines:
            lines[index] = draw(junk_lines)
        elif action == "insert":
            lines.insert(index, draw(junk_lines))
        elif action == "repeat":
            lines[index:index] = lines[index : index + draw(st.integers(1, 20))]
        elif action == "cut":
            lines = lines[:index]
    return draw(separators).join(lines) + draw(st.sampled_from(["\r\n", ""]))


def offers(offer: str) -> st.SearchStrategy[str]:
    junk = st.lists(junk_lines, max_size=12).map(lambda lines: "v=0\r\n" + "\r\n".join(lines))
    return st.one_of(mutated_offers(offer), mutated_offers(offer), junk, st.text(max_size=200))


session_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.sampled_from(["realtime", "transcription", "gpt-realtime", "audio", "text"]),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "model", "instructions", "audio", "tools", "x"])
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=16,
)
sessions = st.one_of(
    st.builds(
        lambda kind, model, extra: json.dumps({"type": kind, "model": model, **extra}),
        st.sampled_from(["realtime", "transcription", "x", 5]),
        session_values,
        st.dictionaries(st.sampled_from(["instructions", "audio", "tools"]), session_values),
    ),
    session_values.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # deep
    st.text(max_size=40),
    st.just(""),
)


def part_bodies(offer: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(offer.encode()),
        offers(offer).map(str.encode),
        sessions.map(str.encode),
        st.binary(max_size=200),
        st.integers(1, 2 * MAX_OFFER_BYTES).map(lambda n: b"x" * n),
    )


@st.composite
def forms(draw: st.DrawFn, offer: str) -> tuple[str, bytes]:
    """A multipart request: its Content-Type and body, built by hand to break anywhere."""
    boundary = draw(st.sampled_from(["b0undary", "x", "-" * 70, "é"]))
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'Multipart/Form-Data; boundary="{boundary}"',
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "multipart/form-data; boundary=other",
                f"multipart/mixed; boundary={boundary}",
            ]
        )
    )
    body = draw(st.sampled_from([b"", b"preamble\r\n"]))
    names = st.sampled_from(['"sdp"', '"session"', "sdp", '""', '"x"', '"SDP"', None])
    types = st.sampled_from(
        [None, "application/sdp", "application/json", "text/plain", "image/png", "x"]
    )
    for _ in range(draw(st.integers(0, 10))):
        name, part_type = draw(names), draw(types)
        disposition = "form-data" + (f"; name={name}" if name is not None else "")
        if draw(st.booleans()):
            disposition += '; filename="f"'
        headers = f"Content-Disposition: {disposition}\r\n"
        if part_type is not None:
            headers += f"Content-Type: {part_type}\r\n"
        part = f"--{boundary}\r\n{headers}\r\n".encode()
        body += part + draw(part_bodies(offer)) + b"\r\n"
    body += draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b"", b"--junk--"]))
    return content_type, body


# -- checks ----------------------------------------------------------------------------


async def check(served: Served, reply: httpx.Response, placed_before: int) -> None:
    """The reply is an answer or an envelope, no refused offer holds anything, and the
    bystander still answers."""
    relay = served.relay
    assert reply.status_code < 500, reply.text
    if reply.status_code == 201:
        assert reply.headers["content-type"] == "application/sdp"
        assert "m=audio" in reply.text
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        hangup = await served.http.post(f"{CALLS}/{call_id}/hangup", headers=AUTH)
        assert hangup.status_code == 200, hangup.text
        await eventually(lambda: len(relay.edge.live) == 1, what="the call released")
        await eventually(lambda: len(served.fake.connections) == 1, what="its session closed")
    else:
        assert reply.status_code in (400, 413), reply.text
        assert reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] == "invalid_request_error"
        assert len(served.fake.specs) == placed_before  # refused before placing
    assert not relay.edge.calls.calls
    assert relay.metric("active_sessions", transport="webrtc") == 0
    assert len(relay.edge.live) == 1  # the bystander's session (what /healthz counts)
    ping = json.dumps({"type": "test.ping", "n": reply.status_code})
    await served.bystander.send(ping)
    assert await asyncio.wait_for(served.bystander.recv(), 10) == ping


@FUZZ
@given(data=st.data(), how=st.sampled_from(["raw", "beta", "part", "part+session"]))
async def test_any_offer(served: Served, data: st.DataObject, how: str) -> None:
    offer = loopback_only(data.draw(offers(served.offer), label="offer"), served.candidate)
    placed_before = len(served.fake.specs)
    if how in ("raw", "beta"):
        path = CALLS if how == "raw" else "/v1/realtime?model=gpt-realtime"
        headers = {**AUTH, "Content-Type": "application/sdp"}
        reply = await served.http.post(path, headers=headers, content=offer.encode())
    else:
        files: dict[str, Any] = {"sdp": (None, offer)}
        if how == "part+session":
            files["session"] = (None, data.draw(sessions, label="session"))
        reply = await served.http.post(CALLS, headers=AUTH, files=files)
    await check(served, reply, placed_before)


@FUZZ
@given(data=st.data())
async def test_any_multipart_form(served: Served, data: st.DataObject) -> None:
    content_type, body = data.draw(forms(served.offer), label="form")
    # Whatever part (or the whole body, read as raw SDP) ends up as the offer: loopback.
    safe = loopback_only(body.decode("utf-8", "replace"), served.candidate).encode()
    placed_before = len(served.fake.specs)
    headers = {**AUTH, "Content-Type": content_type.encode()}  # bytes: any boundary goes
    reply = await served.http.post(CALLS, headers=headers, content=safe)
    await check(served, reply, placed_before)


async def test_the_offer_and_a_form_with_it_are_answered(served: Served) -> None:
    """The fuzz starts from offers and forms the relay answers, so its changes are what it
    refuses."""
    for files in (
        {"sdp": (None, served.offer)},
        {"sdp": (None, served.offer), "session": (None, '{"type": "realtime"}')},
    ):
        placed_before = len(served.fake.specs)
        reply = await served.http.post(CALLS, headers=AUTH, files=files)
        assert reply.status_code == 201, reply.text
        await check(served, reply, placed_before)
        assert len(served.fake.specs) == placed_before + 1
    health = (await served.http.get("/healthz")).json()
    assert health["sessions"] == 1, health  # the bystander's, after all the fuzz's requests
