"""Regression tests for WebRTC offers an attacker sends (POST /v1/realtime/calls): every bad
offer or form is a 4xx in OpenAI's error envelope (never a 500) and opens no call; a body
over ``webrtc_max_offer_bytes`` is a 413; and every call ends when no caller audio arrives
for ``webrtc_idle_timeout_s``, counted from its start, whatever its offer held."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.relay.inprocess import FakeTransceiver, RunningRelay, fake_transceiver, running_relay
from tests.relay.offers import CALLS, assert_envelope, assert_no_call, make_offer, silent_udp_port
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-hardening-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
SDP = {**AUTH, "Content-Type": "application/sdp"}
JUNK_SDP = "v=0\r\nthis is not\r\nan offer\r\n"


@pytest.fixture
def port() -> Iterator[int]:
    with silent_udp_port() as silent:
        yield silent


@pytest.fixture
async def offer(port: int) -> str:
    return await make_offer(port)


@pytest.fixture
async def relay() -> AsyncIterator[tuple[RunningRelay, FakeTransceiver]]:
    async with fake_transceiver() as fake, running_relay([fake], api_keys=[KEY]) as relay:
        yield relay, fake


def form(sdp: str, session: str | bytes) -> dict[str, tuple[None, str | bytes]]:
    return {"sdp": (None, sdp), "session": (None, session)}


async def test_session_parts_that_are_not_valid_sessions_are_400s(
    relay: tuple[RunningRelay, FakeTransceiver], offer: str
) -> None:
    running, fake = relay
    cases: list[tuple[str | bytes, str]] = [
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),  # deeper than Python's recursion
        ('{"type": "realtime", "tools": ' + "[" * 500 + "]" * 500 + "}", "invalid_value"),
        ('{"type": "realtime", "model": 5}', "invalid_value"),
        ('{"type": "realtime", "model": ["x"]}', "invalid_value"),
        ('{"type": "realtime", "model": {"a": 1}}', "invalid_value"),
        ('{"type": 5}', "invalid_value"),
        ('["not", "an", "object"]', "invalid_value"),
        ('{"type": "realtime", "temperature": NaN}', "invalid_json"),
        (b'{"type": "real\xff\xfe"}', "invalid_value"),  # not UTF-8: replaced, then refused
        ("{", "invalid_json"),
    ]
    async with running.http() as http:
        for session, code in cases:
            reply = await http.post(CALLS, headers=AUTH, files=form(offer, session))
            assert_envelope(reply, 400, code)
            await assert_no_call(running, http)
        assert fake.specs == []  # nothing was placed


async def test_multipart_forms_that_cannot_be_read_are_400s(
    relay: tuple[RunningRelay, FakeTransceiver], offer: str
) -> None:
    running, fake = relay
    part = f'--b\r\nContent-Disposition: form-data; name="sdp"\r\n\r\n{offer}\r\n'
    many = "".join(
        f'--b\r\nContent-Disposition: form-data; name="x{i}"\r\n\r\nv\r\n' for i in range(20)
    )
    cases = [
        ("multipart/form-data", part + "--b--\r\n", "invalid_multipart"),  # no boundary
        ("multipart/form-data; boundary=b", many + "--b--\r\n", "invalid_multipart"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--\r\n",  # no name
            "invalid_multipart",
        ),
        ("multipart/mixed; boundary=b", part + "--b--\r\n", "invalid_multipart"),
        ("multipart/form-data; boundary=other", part + "--b--\r\n", "invalid_multipart"),
        ("multipart/form-data; boundary=b", part, "invalid_sdp"),  # cut short: no end
    ]
    async with running.http() as http:
        for content_type, body, code in cases:
            headers = {**AUTH, "Content-Type": content_type}
            reply = await http.post(CALLS, headers=headers, content=body)
            assert_envelope(reply, 400, code)
            await assert_no_call(running, http)
        assert fake.specs == []


async def test_offers_without_usable_audio_open_no_call(
    relay: tuple[RunningRelay, FakeTransceiver], offer: str, port: int
) -> None:
    running, fake = relay
    channel_only = await make_offer(port, audio=None)
    inactive = await make_offer(port, audio="inactive")
    sections = offer.split("m=")
    too_many = sections[0] + "".join("m=" + sections[1] for _ in range(9))
    async with running.http() as http:
        refused = [
            await http.post(CALLS, headers=SDP, content=JUNK_SDP),
            await http.post(CALLS, headers=AUTH, files=form(JUNK_SDP, "")),
            await http.post(CALLS, headers=AUTH, files={"sdp": (None, JUNK_SDP)}),
            await http.post("/v1/realtime?model=gpt-realtime", headers=SDP, content=JUNK_SDP),
            await http.post(CALLS, headers=SDP, content="v=0\r\nm=audio x y\r\n"),
            await http.post(CALLS, headers=SDP, content=channel_only),
            await http.post(CALLS, headers=SDP, content=inactive),
            await http.post(CALLS, headers=SDP, content=too_many),
        ]
        for reply in refused:
            assert_envelope(reply, 400, "invalid_sdp")
        await assert_no_call(running, http)
        assert fake.specs == []


async def test_garbage_offers_do_not_use_up_a_keys_sessions(offer: str) -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY], max_sessions_per_key=1) as relay,
        relay.http() as http,
    ):
        for _ in range(3):
            assert_envelope(
                await http.post(CALLS, headers=SDP, content=JUNK_SDP), 400, "invalid_sdp"
            )
        placed = await http.post(CALLS, headers=SDP, content=offer)
        assert placed.status_code == 201, placed.text
        call_id = placed.headers["location"].rsplit("/", 1)[1]
        hangup = await http.post(f"{CALLS}/{call_id}/hangup", headers=AUTH)
        assert hangup.status_code == 200
        await relay.idle()


async def test_offer_bodies_over_the_limit_are_413s(
    relay: tuple[RunningRelay, FakeTransceiver],
) -> None:
    running, fake = relay
    lines = ("a=" + "x" * 60 + "\r\n") * 160_000  # 10 MB of attribute lines

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: cut off while read
        for start in range(0, len(lines), 64 * 1024):
            yield lines[start : start + 64 * 1024].encode()

    async with running.http() as http:
        refused = [
            await http.post(CALLS, headers=SDP, content="v=0\r\n" + lines),
            await http.post(CALLS, headers=SDP, content=chunked()),
            await http.post(CALLS, headers=AUTH, files=form("v=0\r\n" + lines, "")),
        ]
        for reply in refused:
            error = assert_envelope(reply, 413, "request_too_large")
            assert str(running.edge.settings.webrtc_max_offer_bytes) in error["message"]
        await assert_no_call(running, http)
        assert fake.specs == []


@pytest.mark.parametrize("audio", ["recvonly", "sendrecv"])
async def test_calls_end_when_no_caller_audio_arrives(audio: str, port: int) -> None:
    """A caller that never connects (ICE to a silent port) and, with ``recvonly``, offers
    no audio to send: either way the call ends after the idle timeout, not before."""
    timeout_s = 1.0
    offer = await make_offer(port, audio=audio)
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY], webrtc_idle_timeout_s=timeout_s) as relay,
        relay.http() as http,
    ):
        started = time.monotonic()
        placed = await http.post(CALLS, headers=SDP, content=offer)
        assert placed.status_code == 201, placed.text
        assert "m=audio" in placed.text
        assert len(relay.edge.calls) == 1 and len(fake.specs) == 1
        await eventually(lambda: not relay.edge.calls.calls, what="the idle call ended")
        assert time.monotonic() - started >= timeout_s
        await relay.idle()
        await eventually(lambda: not fake.connections, what="its session closed")
        await assert_no_call(relay, http)


async def test_a_valid_multipart_offer_still_places_a_call(
    relay: tuple[RunningRelay, FakeTransceiver], offer: str
) -> None:
    running, fake = relay
    session = json.dumps({"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."})
    async with running.http() as http:
        placed = await http.post(CALLS, headers=AUTH, files=form(offer, session))
        assert placed.status_code == 201, placed.text
        assert fake.specs[0].overrides is not None
        assert fake.specs[0].overrides["instructions"] == "Hi."
        call_id = placed.headers["location"].rsplit("/", 1)[1]
        assert (await http.post(f"{CALLS}/{call_id}/hangup", headers=AUTH)).status_code == 200
        await running.idle()
        await assert_no_call(running, http)
