"""Twilio Media Streams in process, against fake transceivers: who may start a call
(signatures, ``--twilio-allow-unsigned``), the session a stream opens, the books it is
kept in (transport ``twilio``, the per-account limit, drain), and how a stream ends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.e2e.twilio_client import TwilioPhone, sign
from tests.relay.inprocess import RunningRelay, fake_transceiver, running_relay
from tests.waiting import eventually
from transceiver.protocol.contract import Transport

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "a-twilio-auth-token"
PCMU = {"type": "audio/pcmu"}


def media_url(relay: RunningRelay) -> str:
    return f"ws://127.0.0.1:{relay.port}/v1/twilio/media"


async def voice(relay: RunningRelay, query: str = "", **headers: str) -> httpx.Response:
    async with relay.http() as http:
        return await http.post(f"/v1/twilio/voice{query}", data={"CallSid": "CA1"}, headers=headers)


async def closed_with(ws: ClientConnection, timeout_s: float = 10) -> int | None:
    """The close code the relay ends the stream with."""
    await asyncio.wait_for(ws.wait_closed(), timeout_s)
    return ws.close_code


async def test_without_a_token_or_allow_unsigned_every_request_is_refused() -> None:
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        reply = await voice(relay)
        assert reply.status_code == 403
        assert reply.json()["error"]["code"] == "twilio_not_configured"
        with pytest.raises(InvalidStatus) as info:
            async with connect(media_url(relay)):
                pass
        assert info.value.response.status_code == 403
        assert not fake.specs


async def test_allow_unsigned_serves_twiml_with_the_public_url() -> None:
    async with fake_transceiver() as fake:
        async with running_relay([fake], twilio_allow_unsigned=True) as relay:
            reply = await voice(relay)
            assert reply.status_code == 200
            assert f'url="ws://127.0.0.1:{relay.port}/v1/twilio/media"' in reply.text
        public = "https://calls.example.org"
        settings: dict[str, Any] = {"twilio_auth_token": TOKEN, "twilio_public_url": public}
        async with running_relay([fake], **settings) as relay:
            # Signed over the URL Twilio requested (the public one), not the local one.
            url = f"{public}/v1/twilio/voice?voice=marin"
            good = await voice(
                relay,
                "?voice=marin",
                **{"X-Twilio-Signature": sign(TOKEN, url, {"CallSid": "CA1"})},
            )
            assert good.status_code == 200, good.text
            assert 'url="wss://calls.example.org/v1/twilio/media"' in good.text
            local = f"http://127.0.0.1:{relay.port}/v1/twilio/voice?voice=marin"
            bad = await voice(
                relay,
                "?voice=marin",
                **{"X-Twilio-Signature": sign(TOKEN, local, {"CallSid": "CA1"})},
            )
            assert bad.status_code == 403
            # The port Twilio may add to the URL it signs is accepted too.
            with_port = "https://calls.example.org:443/v1/twilio/voice"
            ported = await voice(
                relay, **{"X-Twilio-Signature": sign(TOKEN, with_port, {"CallSid": "CA1"})}
            )
            assert ported.status_code == 200


async def test_a_host_header_that_is_no_host_is_a_bad_signature_not_a_500() -> None:
    """Without --twilio-public-url the signed URL is built from the Host header."""
    async with fake_transceiver() as fake, running_relay([fake], twilio_auth_token=TOKEN) as relay:
        for host in ("relay.example:abc", "relay.example:99999", "[::1"):
            reply = await voice(relay, **{"Host": host, "X-Twilio-Signature": "c2lnbmVk"})
            assert reply.status_code == 403, (host, reply.text)
            assert reply.json()["error"]["code"] == "invalid_twilio_signature"


async def test_a_stream_opens_a_pcmu_session_counted_as_twilio() -> None:
    default = {"instructions": "Default.", "audio": {"output": {"voice": "cedar"}}}
    settings: dict[str, Any] = {"twilio_auth_token": TOKEN, "twilio_session": json.dumps(default)}
    async with fake_transceiver() as fake, running_relay([fake], **settings) as relay:
        url = media_url(relay)
        ws = await connect(url, additional_headers={"X-Twilio-Signature": sign(TOKEN, url)})
        phone = TwilioPhone(ws)
        try:
            await phone.start({"instructions": "Be brief.", "FirstName": "Jane"})
            await eventually(lambda: fake.specs, what="placed")
            spec = fake.specs[0]
            assert spec.transport is Transport.TWILIO and not spec.media
            session = spec.overrides or {}
            assert session["instructions"] == "Be brief."
            assert session["audio"]["input"]["format"] == PCMU
            assert session["audio"]["output"]["format"] == PCMU
            assert session["audio"]["output"]["voice"] == "cedar"
            assert relay.metric("active_sessions", transport="twilio") == 1
            await phone.stop()
            assert await closed_with(ws) == 1000
        finally:
            await phone.close()
        await relay.idle()
        assert relay.metric("active_sessions", transport="twilio") == 0
        assert relay.metric("sessions_total", transport="twilio") == 1


async def open_stream(relay: RunningRelay, parameters: dict[str, str] | None = None) -> TwilioPhone:
    phone = TwilioPhone(await connect(media_url(relay)))
    await phone.start(parameters or {})
    return phone


async def test_the_twilio_account_holds_the_per_key_limit() -> None:
    async with fake_transceiver() as fake:
        async with running_relay(
            [fake], twilio_allow_unsigned=True, max_sessions_per_key=1
        ) as relay:
            first = await open_stream(relay)
            try:
                await eventually(lambda: len(fake.specs) == 1, what="first placed")
                second = await open_stream(relay)
                try:
                    assert await closed_with(second.ws) == 1013
                finally:
                    await second.close()
            finally:
                await first.close()
            await relay.idle()


@pytest.mark.parametrize(
    "parameters",
    [
        {"session": "[1, 2]"},
        {"session": json.dumps({"audio": {"input": {"format": {"type": "audio/pcm"}}}})},
    ],
)
async def test_a_stream_with_bad_settings_is_closed_before_any_session(
    parameters: dict[str, str],
) -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], twilio_allow_unsigned=True) as relay,
    ):
        phone = await open_stream(relay, parameters)
        try:
            assert await closed_with(phone.ws) == 1008
        finally:
            await phone.close()
        assert not fake.specs


async def test_drain_ends_the_stream_and_a_lost_transceiver_ends_it_too() -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], twilio_allow_unsigned=True) as relay,
    ):
        phone = await open_stream(relay)
        try:
            await eventually(lambda: len(relay.edge.live) == 1, what="live")
            await relay.edge.live.drain(0)
            assert await closed_with(phone.ws) == 1012
        finally:
            await phone.close()
        await relay.idle()
    async with (
        fake_transceiver() as fake,
        running_relay([fake], twilio_allow_unsigned=True) as relay,
    ):
        phone = await open_stream(relay)
        try:
            await eventually(lambda: fake.connections, what="placed")
            fake.kill()
            assert await closed_with(phone.ws) == 1011
        finally:
            await phone.close()
        await relay.idle()


async def test_a_silent_stream_ends_after_the_idle_timeout() -> None:
    settings: dict[str, Any] = {"twilio_allow_unsigned": True, "twilio_idle_timeout_s": 0.3}
    async with fake_transceiver() as fake, running_relay([fake], **settings) as relay:
        ws = await connect(media_url(relay))
        phone = TwilioPhone(ws)
        try:
            await phone.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await phone.send({"event": "start", "start": {"streamSid": "MZ1", "accountSid": "AC1"}})
            assert await closed_with(ws) == 1000  # no media for 0.3 s
        finally:
            await phone.close()
        await relay.idle()
        assert len(fake.specs) == 1


async def test_garbage_on_the_stream_is_ignored_and_the_call_goes_on() -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], twilio_allow_unsigned=True) as relay,
    ):
        phone = await open_stream(relay)
        try:
            await eventually(lambda: len(relay.edge.live) == 1, what="live")
            await phone.ws.send(b"\x00\x01binary")
            await phone.ws.send("not json")
            await phone.ws.send("[1, 2, 3]")
            await phone.send({"event": "media", "media": "not an object"})
            await phone.send({"event": "media", "media": {"payload": "%%% not base64"}})
            await phone.send({"event": "mark", "mark": {"name": "never-sent"}})
            await phone.send({"event": "mark"})
            await phone.send({"event": "something-new"})
            await phone.dtmf("5")
            await phone.stop()
            assert await closed_with(phone.ws) == 1000
        finally:
            await phone.close()
        await relay.idle()
