"""SIP calls at the protocol level: an in-test phone (tests/e2e/sip_client.py) calls the
relay's ``--sip-listen`` on loopback, and the app's side is the official SDK: the
``realtime.call.incoming`` webhook verified by ``webhooks.unwrap``, then
``realtime.calls.accept / reject / refer / hangup`` and a sideband ``?call_id=``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import re
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import InputAudioBufferDtmfEventReceivedEvent
from websockets.asyncio.client import connect

from models.audio import rms
from tests.e2e.client import silence, speech
from tests.e2e.conftest import MOCK_ARGS, UPSTREAM_KEY, proxy_args
from tests.e2e.sip_client import SipPhone
from tests.servers import RunningServer, free_port, relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()
SIGNED = {"RELAY_SIP_WEBHOOK_SECRET": SECRET}
RTP_TIMEOUT_S = 5.0  # the tests that send no RTP (a REFER, say) finish well within it

Hook = tuple[dict[str, str], bytes]


class _Hooks(BaseHTTPRequestHandler):
    received: queue.Queue[Hook]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received.put(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[int, queue.Queue[Hook]]]:
    """A webhook endpoint on loopback: what it receives goes on the queue."""
    received: queue.Queue[Hook] = queue.Queue()
    handler = type("Hooks", (_Hooks,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sip(hooks: tuple[int, queue.Queue[Hook]]) -> Iterator[tuple[RunningServer, int]]:
    port = free_port()
    args = (
        *MOCK_ARGS,
        "--sip-listen",
        f"127.0.0.1:{port}",
        "--sip-webhook-url",
        f"http://127.0.0.1:{hooks[0]}/hooks",
        "--sip-rtp-timeout-s",
        str(RTP_TIMEOUT_S),
    )
    with relay_server(*args, env=SIGNED) as server:
        yield server, port


async def _incoming(received: queue.Queue[Hook]) -> Any:
    """The next webhook, verified and parsed by the official SDK."""
    headers, body = await eventually(
        lambda: None if received.empty() else received.get_nowait(),
        timeout_s=10,
        what="the webhook",
    )
    event = openai.OpenAI(api_key="sk-test").webhooks.unwrap(body, headers, secret=SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="sk-test").webhooks.unwrap(body + b" ", headers, secret=SECRET)
    return event


@contextlib.asynccontextmanager
async def _ringing(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> AsyncIterator[tuple[RunningServer, SipPhone, AsyncOpenAI, Any, Any]]:
    """A phone's INVITE in progress and its verified webhook: the server, the phone, the
    app's SDK client, the INVITE's task and the webhook event."""
    server, port = sip
    phone = await SipPhone(port).open()
    client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
    invite = asyncio.create_task(phone.invite("X-Customer: 42\n"))
    try:
        yield server, phone, client, invite, await _incoming(hooks[1])
    finally:
        invite.cancel()
        phone.close()
        await client.close()


def _metric(server: RunningServer, sample: str) -> float:
    """A sample of the relay's Prometheus metrics."""
    root = server.base_url.removesuffix("/v1")
    text = httpx.get(f"{root}/metrics", headers={"Authorization": "Bearer sk-test"}).text
    line = next((line for line in text.splitlines() if line.startswith(sample + " ")), "")
    return float(line.split()[-1]) if line else 0.0


def _frames(pcm16: bytes) -> list[bytes]:
    """20 ms frames of PCM16 at 8 kHz."""
    return [pcm16[i : i + 320] for i in range(0, len(pcm16), 320)]


def _free_even_port() -> int:
    """An even UDP port free now (RTP takes even ports; binding port 0 gives odd ones)."""
    while True:
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", free_port() & ~1))
            except OSError:
                continue
            return int(udp.getsockname()[1])


def _accepted(server: RunningServer, before: int) -> str | None:
    """The id of the call the server accepted after its log line ``before``."""
    for line in server.lines[before:]:
        if "sip.accepted conn=" in line:
            return line.split("conn=")[1].split()[0]
    return None


def _closed(server: RunningServer, call_id: str) -> bool:
    return any(f"session.closed conn={call_id}" in line for line in server.lines)


async def test_accept_sideband_dtmf_and_hangup(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        assert event.type == "realtime.call.incoming"
        call_id = event.data.call_id
        headers = {h.name: h.value for h in event.data.sip_headers}
        assert headers["X-Customer"] == "42" and phone.call_id in headers["Call-ID"]
        await client.realtime.calls.accept(call_id, type="realtime", instructions="Be brief.")
        provisional, answer = await invite
        assert provisional == [100, 180] and answer.status == 200
        assert _metric(server, 'realtime_relay_active_sessions{transport="sip"}') == 1.0
        assert "PCMU/8000" in answer.body.decode() and "telephone-event" in answer.body.decode()
        async with connect(f"{server.ws_base_url}/realtime?call_id={call_id}") as side:
            await phone.speak(silence(300) + speech("hello there how are you today"))
            await phone.speak(silence(1500))
            kinds = await _until(side, "response.done")
            assert "input_audio_buffer.speech_started" in kinds
            assert "output_audio_buffer.started" in kinds
            await eventually(lambda: len(phone.heard()) > 16_000, what="the reply's RTP")
            assert rms(phone.heard()) > 100
            phone.press("5")
            dtmf = await _event(side, "input_audio_buffer.dtmf_event_received")
            assert dtmf["event"] == "5" and isinstance(dtmf["received_at"], int)
            InputAudioBufferDtmfEventReceivedEvent.model_validate(dtmf, strict=True)
            await client.realtime.calls.hangup(call_id)
            await phone.request_from_server("BYE")
        await eventually(lambda: _closed(server, call_id), what="the session closed")
        assert _metric(server, 'realtime_relay_active_sessions{transport="sip"}') == 0.0


async def _event(side: Any, kind: str, timeout_s: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            event: dict[str, Any] = json.loads(await side.recv())
            if event["type"] == kind:
                return event


async def _until(side: Any, kind: str, timeout_s: float = 20.0) -> list[str]:
    """The kinds of the sideband's events up to the first ``kind``."""
    kinds: list[str] = []
    async with asyncio.timeout(timeout_s):
        while not kinds or kinds[-1] != kind:
            kinds.append(json.loads(await side.recv())["type"])
    return kinds


async def test_reject_with_a_status_code(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        with pytest.raises(openai.BadRequestError):
            await client.realtime.calls.reject(call_id, extra_body={"status_code": 200})
        await client.realtime.calls.reject(call_id, extra_body={"status_code": 486})
        _, final = await invite
        assert final.status == 486
        with pytest.raises(openai.NotFoundError):
            await client.realtime.calls.accept(call_id, type="realtime")


async def test_refer_then_the_caller_hangs_up(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        await client.realtime.calls.accept(call_id, type="realtime")
        assert (await invite)[1].status == 200
        refer = asyncio.create_task(
            client.realtime.calls.refer(call_id, target_uri="tel:+14155550123")
        )
        request = await phone.request_from_server("REFER")
        assert request.headers["refer-to"] == "<tel:+14155550123>"
        await refer  # the phone answered 202 Accepted
        assert (await phone.bye()).status == 200
        await eventually(lambda: _closed(server, call_id), what="the session closed")


async def test_a_caller_without_rtp_is_hung_up(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        await client.realtime.calls.accept(call_id, type="realtime")
        assert (await invite)[1].status == 200
        await phone.speak(silence(200))  # then nothing
        await phone.request_from_server("BYE", timeout_s=RTP_TIMEOUT_S + 10)
        await eventually(lambda: _closed(server, call_id), what="the session closed")


async def test_rtp_from_elsewhere_and_empty_packets_change_nothing(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    """Once the caller's RTP has come, another source's packets are dropped (they would
    take the call's audio both ways), and an empty packet is dropped without stopping the
    caller's audio."""
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        await client.realtime.calls.accept(call_id, type="realtime")
        assert (await invite)[1].status == 200
        stranger = await SipPhone(phone.server[1]).open()
        try:
            async with connect(f"{server.ws_base_url}/realtime?call_id={call_id}") as side:
                await phone.speak(silence(300))
                stranger.rtp_remote = phone.rtp_remote
                await stranger.speak(silence(300))  # the relay's idle RTP goes on to phone
                phone._packet(0, b"")  # the negotiated type, no payload
                await phone.speak(speech("hello there how are you today") + silence(1500))
                assert "response.done" in await _until(side, "response.done")
                await eventually(lambda: len(phone.heard()) > 16_000, what="the reply's RTP")
            assert stranger.heard() == b""
            await client.realtime.calls.hangup(call_id)
            await phone.request_from_server("BYE")
        finally:
            stranger.close()
        # The empty packet dropped (and any a slow session left waiting past 1 s).
        ended = re.compile(
            rf"sip call {call_id} ended \(dtmf 0, dropped packets [1-9]\d*, from elsewhere 15\)"
        )
        await eventually(
            lambda: any(ended.search(line) for line in server.lines), what="the end line"
        )


async def test_cancel_while_ringing(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        phone.cancel()
        _, final = await invite
        assert final.status == 487
        assert [r.status for r in phone.other_responses] == [200]  # the CANCEL's
        with pytest.raises(openai.NotFoundError):
            await client.realtime.calls.accept(call_id, type="realtime")


async def test_what_the_endpoint_refuses(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    server, port = sip
    phone = await SipPhone(port).open()
    try:
        # Junk is dropped: a datagram that is not SIP, a TCP stream that is not (closed).
        phone.sip_transport.sendto(b"\x00 not SIP \r\n\r\n", phone.server)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT SIP AT ALL\r\n\r\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        options = await phone.options()
        assert options.status == 200 and "INVITE" in options.headers["allow"]
        g722_only = phone.offer().replace("RTP/AVP 0 101", "RTP/AVP 9")
        _, final = await phone.invite(offer=g722_only)
        assert final.status == 488  # no G.711: nothing to answer with
        # RTP goes to an address: not a name to look up, nor IPv6 from an IPv4 socket.
        for address in ("IP4 phone.example", "IP6 ::1"):
            offer = phone.offer().replace("c=IN IP4 127.0.0.1", f"c=IN {address}")
            phone.call_id += "+"
            assert (await phone.invite(offer=offer))[1].status == 488
        assert hooks[1].empty()  # and the app was not asked
    finally:
        phone.close()


async def test_a_bad_session_leaves_the_call_waiting(
    sip: tuple[RunningServer, int], hooks: tuple[int, queue.Queue[Hook]]
) -> None:
    async with _ringing(sip, hooks) as (server, phone, client, invite, event):
        call_id = event.data.call_id
        with pytest.raises(openai.NotFoundError):
            await client.realtime.calls.refer(call_id, target_uri="tel:+1")  # not accepted
        with pytest.raises(openai.BadRequestError):
            await client.realtime.calls.accept(
                call_id, type="realtime", audio={"output": {"format": {"type": "audio/pcm"}}}
            )
        await client.realtime.calls.accept(call_id, type="realtime")
        assert (await invite)[1].status == 200
        await client.realtime.calls.hangup(call_id)
        await phone.request_from_server("BYE")


async def test_another_relay_forwards_the_decisions(hooks: tuple[int, queue.Queue[Hook]]) -> None:
    """Two relays behind one load balancer: the app's accept and refer reach relay B, and
    B forwards them to relay A, which holds the call (its id names A)."""
    port = free_port()
    shared = ("--key-secret", "shared-secret-for-tests")
    sip_args = ("--sip-listen", f"127.0.0.1:{port}", "--sip-webhook-url")
    with (
        relay_server(
            *MOCK_ARGS, *shared, *sip_args, f"http://127.0.0.1:{hooks[0]}/", env=SIGNED
        ) as a,
        relay_server(*MOCK_ARGS, *shared) as b,
    ):
        async with _ringing((a, port), hooks) as (_, phone, _, invite, event):
            call_id = event.data.call_id
            other = AsyncOpenAI(api_key="sk-test", base_url=b.base_url)
            await other.realtime.calls.accept(call_id, type="realtime")
            assert (await invite)[1].status == 200
            refer = asyncio.create_task(other.realtime.calls.refer(call_id, target_uri="tel:+1"))
            assert (await phone.request_from_server("REFER")).headers["refer-to"] == "<tel:+1>"
            await refer
            await other.realtime.calls.hangup(call_id)
            await phone.request_from_server("BYE")
            await other.close()
        assert not any("sip." in line for line in b.lines)


async def test_only_allowed_sources_may_call() -> None:
    port = free_port()
    args = (*MOCK_ARGS, "--sip-listen", f"127.0.0.1:{port}", "--sip-allow", "192.0.2.0/24")
    with relay_server(*args) as server:
        phone = await SipPhone(port).open()
        try:
            assert (await phone.invite())[1].status == 403
        finally:
            phone.close()
        assert any("refused (--sip-allow)" in line for line in server.lines)


@pytest.fixture(scope="module")
def story_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, int]]:
    """Calls accepted with the default session; the first turn asks for a long story."""
    script = tmp_path_factory.mktemp("sip") / "script.yaml"
    script.write_text(
        "transcripts: ['tell me a long story']\n"
        "turns:\n  - match: long story\n    reply: >-\n      "
        + " ".join(["Once upon a time a relay spoke to every phone that called it."] * 8)
        + "\n"
    )
    port = free_port()
    args = ("--backend", "mock", "--mock-script", str(script), "--mock-first-delta-ms", "20")
    with relay_server(*args, "--sip-listen", f"127.0.0.1:{port}") as server:
        yield server, port


async def test_barge_in_cuts_the_reply_on_the_phone(
    story_server: tuple[RunningServer, int],
) -> None:
    server, port = story_server
    before = len(server.lines)
    phone = await SipPhone(port).open()
    try:
        assert (await phone.invite())[1].status == 200
        call_id = await eventually(lambda: _accepted(server, before), what="the call id")
        async with connect(f"{server.ws_base_url}/realtime?call_id={call_id}") as side:
            await phone.speak(silence(300) + speech("tell me a long story") + silence(1200))
            await _event(side, "output_audio_buffer.started")
            await eventually(lambda: rms(phone.heard()[-16_000:]) > 300, what="the story")
            speaking = asyncio.create_task(phone.speak(speech("wait a moment please")))
            truncated = await _event(side, "conversation.item.truncated")
            await speaking
            # The item is truncated to what the phone played: the span of its loud frames.
            frames = [rms(f) > 200 for f in _frames(phone.heard())]
            loud_ms = 20 * (len(frames) - frames[::-1].index(True) - frames.index(True))
            assert abs(truncated["audio_end_ms"] - loud_ms) < 200, (truncated, loud_ms)
            # The phone hears silence from the cut on (its RTP goes on, as a phone's does).
            heard = len(phone.heard())
            await eventually(lambda: len(phone.heard()) > heard + 8_000, what="more RTP")
            assert rms(phone.heard()[heard:]) < 50
        assert (await phone.bye()).status == 200
        await eventually(lambda: _closed(server, call_id), what="the session closed")
    finally:
        phone.close()


async def test_a_drain_refuses_new_calls_and_hangs_up() -> None:
    """Also: the public address and the RTP port range's port go in the answer, and a
    call finding no free port in the range is refused."""
    port = free_port()
    args = (*MOCK_ARGS, "--sip-listen", f"127.0.0.1:{port}", "--drain-timeout-s", "1")
    rtp = _free_even_port()  # a range of one even port: room for one call
    nat = ("--sip-public-address", "127.0.0.9", "--sip-rtp-ports", f"{rtp}-{rtp + 1}")
    with relay_server(*args, *nat) as server:
        phone, late = await SipPhone(port).open(), await SipPhone(port).open()
        try:
            _, answer = await phone.invite()
            assert answer.status == 200 and "@127.0.0.9:" in answer.headers["contact"]
            assert phone.rtp_remote == ("127.0.0.9", rtp)
            assert (await late.invite())[1].status == 503  # no RTP port left
            late.close()
            late = await SipPhone(port).open()
            server.process.send_signal(signal.SIGTERM)
            await eventually(
                lambda: any("draining" in line for line in server.lines), what="the drain"
            )
            assert (await late.invite())[1].status == 503
            await phone.request_from_server("BYE")
        finally:
            phone.close()
            late.close()


async def test_a_call_through_the_openai_proxy(upstream: RunningServer) -> None:
    """The proxy backend: the call's audio goes upstream as PCM16, the reply comes back."""
    port = free_port()
    args = proxy_args(upstream, "--sip-listen", f"127.0.0.1:{port}")
    with relay_server(*args, env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:
        before = len(server.lines)
        phone = await SipPhone(port).open()
        try:
            assert (await phone.invite())[1].status == 200
            call_id = await eventually(lambda: _accepted(server, before), what="the call id")
            auth = {"Authorization": "Bearer sk-client"}
            url = f"{server.ws_base_url}/realtime?call_id={call_id}"
            async with connect(url, additional_headers=auth) as side:
                await phone.speak(silence(300) + speech("hello there how are you today"))
                await phone.speak(silence(1500))
                kinds = await _until(side, "response.done")
                assert "output_audio_buffer.started" in kinds
                await eventually(lambda: rms(phone.heard()[-16_000:]) > 300, what="the reply")
            assert (await phone.bye()).status == 200
            await eventually(lambda: _closed(server, call_id), what="the session closed")
        finally:
            phone.close()
