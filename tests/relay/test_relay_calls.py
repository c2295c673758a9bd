"""WebRTC calls in process against a fake transceiver: the spec a call is placed with, the
answer, sidebands, limits and refusals (HTTP errors), hangup, drain, and forwarding of
sidebands and hangups to the relay a call id names.

The caller makes a real offer but never connects: its candidates are replaced with one on
127.0.0.1 whose socket never answers, so the relay's connectivity checks stay on loopback
(the call lives until it is hung up, drained, or idle for ``webrtc_idle_timeout_s``)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.ephemeral import call_id_for
from tests.relay.inprocess import HOST, RunningRelay, fake_transceiver, running_relay
from tests.waiting import eventually
from transceiver.protocol.contract import SessionKind, Transport

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-calls-test"
SECRET = "a-secret-for-the-calls-tests"
PUBLIC_IP = "203.0.113.7"  # TEST-NET-3: only written into the answer, never dialled


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


def on_loopback(sdp: str, port: int) -> str:
    """``sdp`` with its candidates replaced by one host candidate on 127.0.0.1:``port``."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        lines.append(line)
        if line.startswith("a=ice-pwd:"):
            lines.append(f"a=candidate:1 1 UDP 2130706431 {HOST} {port} typ host")
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
async def offer(silent_port: int) -> AsyncIterator[str]:
    pc = RTCPeerConnection()
    pc.createDataChannel("oai-events")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        yield on_loopback(pc.localDescription.sdp, silent_port)
    finally:
        await pc.close()


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def place(relay: RunningRelay, sdp: str, key: str = KEY) -> httpx.Response:
    async with relay.http() as http:
        headers = {**bearer(key), "Content-Type": "application/sdp"}
        return await http.post("/v1/realtime/calls", content=sdp, headers=headers)


async def hang_up(relay: RunningRelay, call_id: str) -> httpx.Response:
    async with relay.http() as http:
        return await http.post(f"/v1/realtime/calls/{call_id}/hangup", headers=bearer())


async def next_event(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))  # type: ignore[no-any-return]


async def test_a_call_placed_answered_and_hung_up(offer: str) -> None:
    settings = {"api_keys": [KEY], "webrtc_public_ip": PUBLIC_IP}
    async with fake_transceiver() as fake, running_relay([fake], **settings) as relay:
        reply = await place(relay, offer)
        assert reply.status_code == 201, reply.text
        assert reply.headers["content-type"] == "application/sdp"
        assert f"c=IN IP4 {PUBLIC_IP}" in reply.text
        hosts = [line.split()[4] for line in reply.text.splitlines() if " typ host" in line]
        assert all(address == PUBLIC_IP for address in hosts if ":" not in address), hosts
        call_id = reply.headers["location"].removeprefix("/v1/realtime/calls/")
        assert call_id.startswith("rtc_")
        spec = fake.specs[0]
        assert spec.transport is Transport.WEBRTC and spec.conn == call_id
        assert (spec.kind, spec.model) == (SessionKind.REALTIME, "gpt-realtime")
        assert spec.overrides is not None and spec.overrides["type"] == "realtime"
        assert relay.metric("active_sessions", transport="webrtc") == 1
        sideband = f"{relay.ws_url}?call_id={call_id}"
        async with connect(sideband, additional_headers=bearer()) as side:
            update = {"type": "session.update", "session": {"instructions": "Hi."}}
            await side.send(json.dumps(update))
            assert await next_event(side) == update  # to the session and back (echoed)
            assert (await hang_up(relay, call_id)).status_code == 200
            with pytest.raises(ConnectionClosed) as closed:
                await next_event(side)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        await relay.idle()
        assert relay.metric("active_sessions", transport="webrtc") == 0
        await eventually(lambda: not fake.connections, what="the session closed")
        gone = await hang_up(relay, call_id)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "call_not_found"


async def test_limits_and_refusals_are_http_errors(offer: str) -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY], max_sessions_per_key=1) as relay,
    ):
        first = await place(relay, offer)
        assert first.status_code == 201
        second = await place(relay, offer)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "session_limit_reached"
        assert len(fake.specs) == 1
        call_id = first.headers["location"].rsplit("/", 1)[1]
        assert (await hang_up(relay, call_id)).status_code == 200
        await relay.idle()
        fake.refusing = True
        full = await place(relay, offer)
        assert full.status_code == 503
        error = full.json()["error"]
        assert error["code"] == "session_limit_reached"
        assert error["message"] == "No transceiver can take this call now; try again later."
        await relay.idle()  # the refused call's key slot was given back
        fake.refusing = False
        again = await place(relay, offer)
        assert again.status_code == 201
        assert (
            await hang_up(relay, again.headers["location"].rsplit("/", 1)[1])
        ).status_code == 200


async def test_drain_closes_calls(offer: str) -> None:
    async with fake_transceiver() as fake, running_relay([fake]) as relay:
        reply = await place(relay, offer)
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        async with connect(f"{relay.ws_url}?call_id={call_id}") as side:
            await relay.edge.live.drain(0)
            event = await next_event(side)
            assert event["type"] == "error"
            assert event["error"]["code"] == "server_shutting_down"
            with pytest.raises(ConnectionClosed):
                await next_event(side)
        await relay.idle()
        assert call_id not in relay.edge.calls.calls


async def test_sidebands_and_hangups_reach_the_relay_holding_the_call(offer: str) -> None:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], key_secret=SECRET) as a,
        running_relay([fake], key_secret=SECRET) as b,
    ):
        reply = await place(a, offer)
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        async with connect(f"{b.ws_url}?call_id={call_id}") as side:  # forwarded to A
            update = {"type": "session.update", "session": {"instructions": "Hi."}}
            await side.send(json.dumps(update))
            assert await next_event(side) == update
            hangup = await hang_up(b, call_id)  # forwarded to A
            assert hangup.status_code == 200
            with pytest.raises(ConnectionClosed):
                await next_event(side)
        await a.idle()
        gone = await hang_up(b, call_id)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "call_not_found"
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{b.ws_url}?call_id={call_id}"):
                pass
        assert info.value.response.status_code == 404  # A's answer, passed on
        # A call id naming a relay that cannot be reached (a port bound, not listening): 502.
        with socket.socket() as closed_port:
            closed_port.bind((HOST, 0))
            lost = call_id_for(b.edge.signer, f"http://{HOST}:{closed_port.getsockname()[1]}")
            unreachable = await hang_up(b, lost)
            assert unreachable.status_code == 502
            assert unreachable.json()["error"]["code"] == "call_unreachable"
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"{b.ws_url}?call_id={lost}"):
                    pass
            assert info.value.response.status_code == 502
