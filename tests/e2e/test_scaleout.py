"""Three transceivers on loopback behind relays: placement, refusal when full, a transceiver
killed mid-session, drain on SIGTERM, and two relays sharing signed keys and calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import Recorder, silence, speech, user_text
from tests.e2e.conftest import SCRIPT
from tests.e2e.link import LINK_ENV, LINK_HEADERS, LINK_SECRET
from tests.e2e.test_webrtc import Microphone, until
from tests.servers import RunningServer, relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

MOCK = ("--backend", "mock", "--mock-script", SCRIPT, "--mock-first-delta-ms", "20")
MOCK += ("--mock-words-per-minute", "900")


@contextlib.contextmanager
def transceivers(n: int, *extra: str) -> Iterator[list[RunningServer]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(relay_server(*MOCK, *extra, command="transceiver", env=LINK_ENV))
            for _ in range(n)
        ]


def relay_args(members: list[RunningServer], *extra: str) -> tuple[str, ...]:
    args: list[str] = ["--link-secret", LINK_SECRET]  # the transceivers' (LINK_ENV)
    for member in members:
        args += ["--transceiver", f"ws://127.0.0.1:{member.port}"]
    return (*args, "--resolve-interval-s", "0.5", *extra)


async def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.request(method, url, **kwargs)


async def load_of(member: RunningServer) -> dict[str, Any]:
    reply = await request("GET", f"{member.base_url}/load", headers=LINK_HEADERS)
    return reply.json()  # type: ignore[no-any-return]


def client_for(server: RunningServer, key: str = "sk-test") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=server.base_url)


async def text_turn(rec: Recorder, text: str = "hello") -> dict[str, Any]:
    await user_text(rec, text)
    await rec.send({"type": "response.create"})
    return await rec.until("response.done")


async def closed_with(rec: Recorder, timeout_s: float = 20) -> tuple[list[str], int | None]:
    """Read until the server closes; the codes of every error the session got (also those a
    wait before this one read) and the close code."""
    try:
        while True:
            await rec.next(timeout_s)
    except ConnectionClosed as exc:
        codes = [event["error"]["code"] for event in rec.of_type("error")]
        return codes, exc.rcvd.code if exc.rcvd else None


async def test_placement_refusal_and_a_killed_transceiver() -> None:
    with transceivers(3, "--max-sessions", "2") as members:
        with relay_server(*relay_args(members), command="relay") as relay:
            async with contextlib.AsyncExitStack() as stack:
                recs = []
                for _ in range(6):
                    conn = await stack.enter_async_context(
                        client_for(relay).realtime.connect(model="gpt-realtime")
                    )
                    recs.append(Recorder(conn))
                    await recs[-1].until("session.created")
                # Least-loaded placement: two each.
                assert [(await load_of(m))["sessions"] for m in members] == [2, 2, 2]
                # All full: a clear error and 1013 ("try again later"), never a hang.
                async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                    codes, close_code = await closed_with(Recorder(conn))
                assert codes == ["session_limit_reached"] and close_code == 1013
                # One transceiver dies: only its two sessions end (error + 1011).
                victim = members[1]
                victim.process.send_signal(signal.SIGKILL)
                outcomes: list[Any] = []
                for rec in recs:
                    try:
                        done = await text_turn(rec)
                        outcomes.append(done["response"]["status"])
                    except ConnectionClosed:  # read what came before the close
                        outcomes.append(await closed_with(rec, 5))
                lost = (["transceiver_unavailable"], 1011)
                assert sorted(outcomes, key=str) == [lost, lost] + ["completed"] * 4
            # New sessions go elsewhere at once.
            async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                assert (await text_turn(rec))["response"]["status"] == "completed"
            metrics = (await request("GET", f"{relay.base_url.removesuffix('/v1')}/metrics")).text
            assert 'realtime_relay_placement_refusals_total{transceiver="none"} 1.0' in metrics
            assert 'realtime_relay_errors_total{code="session_limit_reached"} 1.0' in metrics
            assert 'realtime_relay_errors_total{code="transceiver_unavailable"} 2.0' in metrics


async def test_transceiver_drains_on_sigterm() -> None:
    with transceivers(2, "--drain-timeout-s", "4") as members:
        with relay_server(*relay_args(members), command="relay") as relay:
            async with contextlib.AsyncExitStack() as stack:
                recs = []
                for _ in range(2):
                    conn = await stack.enter_async_context(
                        client_for(relay).realtime.connect(model="gpt-realtime")
                    )
                    recs.append(Recorder(conn))
                    await recs[-1].until("session.created")
                assert [(await load_of(m))["sessions"] for m in members] == [1, 1]
                draining = members[0]
                draining.process.send_signal(signal.SIGTERM)
                health = await eventually(
                    lambda: _unavailable(f"{draining.base_url}/healthz"), what="draining"
                )
                assert health.json()["status"] == "draining"
                # Running sessions go on while draining...
                for rec in recs:
                    assert (await text_turn(rec))["response"]["status"] == "completed"
                # ...new ones go to the other transceiver...
                async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                    await Recorder(conn).until("session.created")
                    assert (await load_of(members[1]))["sessions"] == 2
                # ...and at the deadline the rest are closed with a clear error and 1012.
                # Which session is on the draining transceiver is up to placement: the one
                # that gets closed.
                started = time.monotonic()
                waits = {asyncio.ensure_future(closed_with(rec, 10)): rec for rec in recs}
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in pending:
                    wait.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                assert [w.result() for w in done] == [(["server_shutting_down"], 1012)]
                assert time.monotonic() - started < 6
                assert draining.process.wait(10) == 0
                (kept,) = [waits[w] for w in pending]
                assert (await text_turn(kept))["response"]["status"] == "completed"


async def test_drain_lets_a_session_that_ends_in_time_finish() -> None:
    with transceivers(1, "--drain-timeout-s", "20") as members:
        with relay_server(*relay_args(members), command="relay") as relay:
            async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                members[0].process.send_signal(signal.SIGTERM)
                assert (await text_turn(rec))["response"]["status"] == "completed"
            started = time.monotonic()
            assert members[0].process.wait(10) == 0  # exits once its last session ends
            assert time.monotonic() - started < 5
            assert not rec.of_type("error")


async def test_relay_drains_on_sigterm() -> None:
    with transceivers(1) as members:
        with relay_server(*relay_args(members, "--drain-timeout-s", "3"), command="relay") as relay:
            root = relay.base_url.removesuffix("/v1")
            async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                relay.process.send_signal(signal.SIGTERM)
                await eventually(lambda: _unavailable(f"{root}/healthz"), what="draining")
                refused = await request("POST", f"{root}/v1/realtime/calls", content="v=0")
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "server_shutting_down"
                assert (await text_turn(rec))["response"]["status"] == "completed"
                codes, close_code = await closed_with(rec, 10)
                assert codes == ["server_shutting_down"] and close_code == 1012
            assert relay.process.wait(10) == 0


async def test_two_relays_share_keys_and_calls() -> None:
    secret = ("--key-secret", "shared-secret-for-tests")
    with transceivers(2) as members:
        with (
            relay_server(*relay_args(members, *secret), command="relay") as a,
            relay_server(*relay_args(members, *secret), command="relay") as b,
        ):
            async with httpx.AsyncClient(timeout=20) as http:
                minted = await http.post(f"{a.base_url}/realtime/client_secrets", json={})
                key = minted.json()["value"]
                # A key minted by relay A opens a session on relay B.
                async with client_for(b, key).realtime.connect(model="gpt-realtime") as conn:
                    rec = Recorder(conn)
                    await rec.until("session.created")
                    assert (await text_turn(rec))["response"]["status"] == "completed"
                # A WebRTC call on A; its sideband reaches B, which forwards it to A.
                pc = RTCPeerConnection()
                channel = pc.createDataChannel("oai-events")
                events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                channel.on("message", lambda message: events.put_nowait(json.loads(message)))
                pc.addTrack(Microphone(silence(3000) + speech("hello there how are you")))
                await pc.setLocalDescription(await pc.createOffer())
                reply = await http.post(
                    f"{a.base_url}/realtime/calls",
                    content=pc.localDescription.sdp,
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
                )
                assert reply.status_code == 201, reply.text
                await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
                call_id = reply.headers["location"].rsplit("/", 1)[1]
                seen: list[str] = []
                await until(events, "session.created", seen)
                side_url = f"{b.ws_base_url}/realtime?call_id={call_id}"
                headers = {"Authorization": f"Bearer {key}"}
                async with connect(side_url, additional_headers=headers) as side:
                    await side.send(
                        json.dumps(
                            {
                                "type": "session.update",
                                "session": {"type": "realtime", "instructions": "Be brief."},
                            }
                        )
                    )
                    updated = await until(events, "session.updated", seen)
                    assert updated["session"]["instructions"] == "Be brief."
                    while True:  # the sideband sees the call's events too
                        event = json.loads(await asyncio.wait_for(side.recv(), 10))
                        if event["type"] == "session.updated":
                            break
                # A forged call id is not forwarded anywhere.
                forged = call_id[:-4] + "AAAA"
                with pytest.raises(Exception, match="404"):
                    async with connect(f"{b.ws_base_url}/realtime?call_id={forged}"):
                        pass
                hangup = await http.post(
                    f"{b.base_url}/realtime/calls/{call_id}/hangup", headers=headers
                )
                assert hangup.status_code == 200
                assert (await http.get(f"{a.base_url.removesuffix('/v1')}/healthz")).json()[
                    "sessions"
                ] == 0
                await pc.close()


async def test_per_key_session_limit() -> None:
    with transceivers(1) as members:
        args = relay_args(members, "--max-sessions-per-key", "1", "--api-keys", "sk-a,sk-b")
        with relay_server(*args, command="relay") as relay:
            async with client_for(relay, "sk-a").realtime.connect(model="gpt-realtime") as first:
                await Recorder(first).until("session.created")
                async with client_for(relay, "sk-a").realtime.connect(model="gpt-realtime") as c:
                    codes, close_code = await closed_with(Recorder(c))
                assert codes == ["session_limit_reached"] and close_code == 1013
                async with client_for(relay, "sk-b").realtime.connect(model="gpt-realtime") as c:
                    await Recorder(c).until("session.created")  # another key is not limited
                # Ephemeral keys minted by sk-a share its limit.
                minted = await request(
                    "POST",
                    f"{relay.base_url}/realtime/client_secrets",
                    headers={"Authorization": "Bearer sk-a"},
                    json={},
                )
                ek = minted.json()["value"]
                async with client_for(relay, ek).realtime.connect(model="gpt-realtime") as c:
                    codes, close_code = await closed_with(Recorder(c))
                assert codes == ["session_limit_reached"] and close_code == 1013


async def test_metrics_and_json_logs() -> None:
    with transceivers(1, "--log-format", "json") as members:
        with relay_server(*relay_args(members), command="relay") as relay:
            async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                tracing = {"workflow_name": "checkout", "group_id": "g-7"}  # on the turn line
                await rec.send(
                    {"type": "session.update", "session": {"type": "realtime", "tracing": tracing}}
                )
                assert (await rec.until("session.updated"))["session"]["tracing"] == {
                    **tracing,
                    "metadata": None,
                }
                await text_turn(rec)

            async def relay_metrics_after_close() -> str | None:
                url = f"{relay.base_url.removesuffix('/v1')}/metrics"
                text = (await request("GET", url)).text
                gone = 'realtime_relay_active_sessions{transport="ws"} 0.0' in text
                return text if gone else None

            relay_metrics = await eventually(relay_metrics_after_close, what="session closed")
            assert 'realtime_relay_sessions_total{transport="ws"} 1.0' in relay_metrics
            assert 'realtime_relay_events_total{direction="in"}' in relay_metrics
            url = f"{members[0].base_url}/metrics"
            metrics = (await request("GET", url, headers=LINK_HEADERS)).text
            assert 'realtime_transceiver_sessions_total{transport="ws"} 1.0' in metrics
            assert 'realtime_transceiver_turn_stage_seconds_count{stage="first_delta"} 1.0' in (
                metrics
            )
            assert 'realtime_transceiver_turn_stage_seconds_count{stage="llm_first_token"}' in (
                metrics
            )
    lines = [json.loads(line) for line in members[0].lines if line.startswith("{")]
    events = {line.get("event"): line for line in lines}
    assert events["session.start"]["id"].startswith("sess_")
    assert events["turn"]["session_id"] == events["session.start"]["id"]
    assert events["session.end"]["id"] == events["session.start"]["id"]
    assert "first_delta_ms" in events["turn"]
    assert events["turn"]["trace_workflow"] == "checkout" and events["turn"]["trace_group"] == "g-7"
    # The relay's lines name the connection and where it went; the transceiver's
    # session.start joins that name to the session id.
    placed = next(line for line in relay.lines if "session.placed" in line)
    assert f"transceiver=ws://127.0.0.1:{members[0].port}" in placed
    conn = placed.split("conn=")[1].split()[0]
    assert conn.startswith("conn_") and events["session.start"]["conn"] == conn
    assert any(f"session.closed conn={conn}" in line for line in relay.lines)


async def _unavailable(url: str) -> httpx.Response | None:
    """The reply from ``url`` once it answers 503 (draining)."""
    reply = await request("GET", url)
    return reply if reply.status_code == 503 else None
