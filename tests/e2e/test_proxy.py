"""``--backend openai``: the proxy in front of an upstream, which is a second instance of
this server in mock mode on loopback (no internet needed; fixtures in conftest.py).

The turns every backend shares (text, audio, function call, barge-in, beta client) run
against this proxy in test_scenarios.py; here is what only the proxy does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import Recorder, silence, speech, user_message, user_text
from tests.e2e.conftest import MOCK_ARGS, PREFIX, UPSTREAM_KEY, proxy_args
from tests.e2e.test_webrtc import Microphone, speaker, until
from tests.servers import RunningServer, relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client_for(server: RunningServer, key: str = "sk-client") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=server.base_url)


async def test_policy_shapes_ga_and_beta_sessions(proxy: RunningServer) -> None:
    """The operator's model mapping and instructions prefix, in either dialect (the
    turns themselves are the shared scenarios of test_scenarios.py)."""
    async with client_for(proxy).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert rec.events[0]["type"] == "session.created"  # held until configured
        assert created["session"]["model"] == "gpt-realtime-2025-08-28"  # the operator's mapping
        assert created["session"]["instructions"] == PREFIX
        await rec.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
        )
        updated = await rec.until("session.updated")
        assert updated["session"]["instructions"] == PREFIX + "\n\nBe brief."
        assert not rec.of_type("error")
        rec.check()
    async with client_for(proxy).realtime.connect(model="gpt-realtime-2025-08-28") as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert created["session"]["model"] == "gpt-realtime-2025-08-28"
        rec.check()
    client = client_for(proxy).with_options(websocket_base_url=proxy.ws_base_url)
    async with client.beta.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn, beta=True)
        created = await rec.until("session.created")
        assert created["session"]["instructions"] == PREFIX  # beta shape, kept end to end
        assert "modalities" in created["session"]
        rec.check()


async def test_ephemeral_key_configuration_reaches_upstream(proxy: RunningServer) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        minted = await http.post(
            f"{proxy.base_url}/realtime/client_secrets",
            headers={"Authorization": "Bearer sk-client"},
            json={"session": {"type": "realtime", "instructions": "Speak like a pirate."}},
        )
        key = minted.json()["value"]
    async with client_for(proxy, key).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert created["session"]["instructions"] == PREFIX + "\n\nSpeak like a pirate."


async def test_disallowed_model_is_refused(proxy: RunningServer) -> None:
    url = f"{proxy.ws_base_url}/realtime?model=gpt-4o-realtime-preview"
    async with connect(url, additional_headers={"Authorization": "Bearer sk-client"}) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["type"] == "error"
        assert error["error"]["code"] == "invalid_value" and error["error"]["param"] == "model"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008  # a policy refusal: SDKs do not retry it
    # A disallowed model in session.update is refused, and the session goes on.
    async with client_for(proxy).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        await rec.send({"type": "session.update", "session": {"type": "realtime", "model": "x"}})
        error = await rec.until("error")
        assert error["error"]["param"] == "model"
        await user_text(rec, "still here")
        await rec.send({"type": "response.create"})
        assert (await rec.until("response.done"))["response"]["status"] == "completed"


async def refused(url: str, key: str = "sk-client") -> tuple[dict[str, Any], int | None]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 20))
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 20)
        return first, ws.close_code


async def test_upstream_refusals(upstream: RunningServer) -> None:
    """A wrong server key, an unreachable upstream and a silent one: an error, never a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts TCP, never answers the handshake
        cases = [
            (proxy_args(upstream), {"OPENAI_API_KEY": "sk-wrong"}, "upstream_auth_failed", 1008),
            (
                (
                    *proxy_args(upstream)[:3],
                    f"ws://127.0.0.1:{silent.getsockname()[1]}/v1/realtime",
                    "--upstream-open-timeout-s",
                    "1",
                    *proxy_args(upstream)[4:],
                ),
                {"OPENAI_API_KEY": UPSTREAM_KEY},
                "upstream_unavailable",
                1011,
            ),
        ]
        for args, env, code, close_code in cases:
            with relay_server(*args, env=env) as server:
                url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
                first, closed = await refused(url)
                assert first["type"] == "error" and first["error"]["code"] == code
                assert closed == close_code


@pytest.mark.parametrize("fault", ["close", "error"])
async def test_upstream_drop_and_error(fault: str) -> None:
    with relay_server(
        *MOCK_ARGS, "--api-keys", UPSTREAM_KEY, f"--mock-fault-{fault}-after", "3"
    ) as faulty:
        with relay_server(*proxy_args(faulty), env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:

            async def turn() -> list[dict[str, Any]]:
                async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
                    rec = Recorder(conn)
                    await rec.until("session.created")
                    await user_text(rec, "hello")
                    await rec.send({"type": "response.create"})
                    with contextlib.suppress(ConnectionClosed, Exception):
                        await rec.until("response.done", timeout_s=10)
                    return rec.events

            events = await turn()
    errors = [e["error"]["code"] for e in events if e["type"] == "error"]
    if fault == "close":
        assert errors == ["upstream_unavailable"]  # said clearly, then 1011 to reconnect
    else:
        assert errors == ["injected_fault"]  # the upstream's own error passes through
        assert events[-1]["type"] == "response.done"  # and the session goes on


async def test_webrtc_through_the_proxy(proxy: RunningServer) -> None:
    """Caller audio goes upstream as appends; the reply plays on the track; barge-in
    truncates the upstream item to what the caller heard."""
    base = proxy.base_url
    async with httpx.AsyncClient(timeout=20) as http:
        pc = RTCPeerConnection()
        channel = pc.createDataChannel("oai-events")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        received: list[dict[str, Any]] = []

        def on_message(message: str) -> None:
            received.append(json.loads(message))
            events.put_nowait(received[-1])

        channel.on("message", on_message)
        pc.addTrack(Microphone(silence(300) + speech("hello there how are you today")))
        heard = bytearray()
        tasks = []
        pc.on("track", lambda track: tasks.append(asyncio.ensure_future(speaker(track, heard))))
        await pc.setLocalDescription(await pc.createOffer())
        reply = await http.post(
            f"{base}/realtime/calls",
            content=pc.localDescription.sdp,
            headers={"Authorization": "Bearer sk-client", "Content-Type": "application/sdp"},
        )
        assert reply.status_code == 201, reply.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        seen: list[str] = []
        created = await until(events, "session.created", seen)
        assert created["session"]["instructions"].startswith(PREFIX)
        await until(events, "input_audio_buffer.speech_started", seen)
        done = await until(events, "response.done", seen, timeout_s=30)
        assert done["response"]["status"] == "completed"
        await until(events, "output_audio_buffer.stopped", seen)
        assert len(heard) > 24_000
        # Interrupt a long reply as the Agents SDK does: cancel, then clear.
        channel.send(json.dumps(user_message("tell me a long story")))
        channel.send(json.dumps({"type": "response.create"}))
        started = await until(events, "output_audio_buffer.started", seen)
        at = len(heard)  # let the caller hear about a second of it (PCM16 24 kHz)
        await eventually(lambda: len(heard) >= at + 48_000, 10, what="a second heard")
        channel.send(json.dumps({"type": "response.cancel"}))
        channel.send(json.dumps({"type": "output_audio_buffer.clear"}))
        cleared = await until(events, "output_audio_buffer.cleared", seen)
        assert cleared["response_id"] == started["response_id"]
        truncated = await until(events, "conversation.item.truncated", seen)
        mark = received.index(started)
        if not any(e["type"] == "response.done" for e in received[mark:]):
            await until(events, "response.done", seen)
        cancelled = [e for e in received[mark:] if e["type"] == "response.done"][-1]
        assert cancelled["response"]["status"] == "cancelled"
        assert 500 <= truncated["audio_end_ms"] <= 3000  # about what the caller heard
        assert "error" not in seen
        call_id = reply.headers["location"].rsplit("/", 1)[1]
        await http.post(f"{base}/realtime/calls/{call_id}/hangup")
        await pc.close()
        for task in tasks:
            task.cancel()


async def events_until(ws: Any, event_type: str, timeout_s: float = 10) -> list[dict[str, Any]]:
    """Server events up to and including the first ``event_type``."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != event_type:
        seen.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    return seen


async def test_policy_holds_for_any_frame_layout(proxy: RunningServer) -> None:
    """The policy reads the event, not the frame's first bytes: a reordered or doubled
    ``type`` cannot slip a ``session.update`` past it, and odd frames cost nothing."""
    url = f"{proxy.ws_base_url}/realtime?model=gpt-realtime"
    async with connect(url, additional_headers={"Authorization": "Bearer sk-client"}) as ws:
        await events_until(ws, "session.created")
        await ws.send(
            '{"session":{"type":"realtime","instructions":"Mine."},"type":"session.update"}'
        )
        updated = (await events_until(ws, "session.updated"))[-1]
        assert updated["session"]["instructions"] == PREFIX + "\n\nMine."
        # JSON parsers keep the last of two keys: this is a session.update, not an append.
        await ws.send(
            '{"type":"input_audio_buffer.append","type":"session.update",'
            '"session":{"type":"realtime","instructions":"Again."}}'
        )
        updated = (await events_until(ws, "session.updated"))[-1]
        assert updated["session"]["instructions"] == PREFIX + "\n\nAgain."
        await ws.send('{"session":{"type":"realtime","model":"gpt-4o"},"type":"session.update"}')
        error = (await events_until(ws, "error"))[-1]
        assert error["error"]["param"] == "model"
        # Not an object, not JSON: the upstream answers with an error; the session goes on.
        for frame in ('[{"type":"session.update"}]', "not json"):
            await ws.send(frame)
            assert (await events_until(ws, "error"))[-1]["error"]["type"] == "invalid_request_error"
        await ws.send(json.dumps(user_message("still here")))
        await ws.send('{"type":"response.create"}')
        done = (await events_until(ws, "response.done"))[-1]
        assert done["response"]["status"] == "completed"


async def test_stalled_upstream_is_an_error_not_a_hang() -> None:
    """An upstream that accepts the connection and never starts the session."""
    with relay_server(
        *MOCK_ARGS, "--api-keys", UPSTREAM_KEY, "--mock-fault-stall-after", "0"
    ) as up:
        args = proxy_args(up, "--upstream-open-timeout-s", "1")
        with relay_server(*args, env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:
            url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
            first, closed = await refused(url)
    assert first["type"] == "error" and first["error"]["code"] == "upstream_unavailable"
    assert closed == 1011


async def test_upstream_drop_while_the_client_streams_audio() -> None:
    """Whichever direction notices first, the client hears why and gets 1011."""
    faulty = (*MOCK_ARGS, "--api-keys", UPSTREAM_KEY, "--mock-fault-close-after", "4")
    with relay_server(*faulty) as up:
        with relay_server(*proxy_args(up), env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:
            url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
            for _ in range(3):
                headers = {"Authorization": "Bearer sk-client"}
                async with connect(url, additional_headers=headers) as ws:
                    await events_until(ws, "session.created")
                    chunk = json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "audio": base64.b64encode(silence(20)).decode(),
                        }
                    )
                    note = json.dumps(user_message("note"))
                    errors: list[str] = []
                    # Audio streams on; each note gives two upstream events, and the
                    # upstream drops the session at its fourth (after created, updated).
                    with contextlib.suppress(ConnectionClosed):
                        async with asyncio.timeout(20):
                            for n in itertools.count():
                                await ws.send(note if n % 10 == 0 else chunk)
                                with contextlib.suppress(TimeoutError):
                                    event = json.loads(await asyncio.wait_for(ws.recv(), 0.02))
                                    if event["type"] == "error":
                                        errors.append(event["error"]["code"])
                    with contextlib.suppress(ConnectionClosed, TimeoutError):
                        while True:  # what came before the close
                            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                            if event["type"] == "error":
                                errors.append(event["error"]["code"])
                    assert errors == ["upstream_unavailable"]
                    assert ws.close_code == 1011


async def test_the_mirror_logs_turns_and_usage(upstream: RunningServer) -> None:
    """Each turn's first-delta latency and the session's usage reach the logs (the same
    figures feed the transceiver's turn_stage_seconds and usage_tokens metrics)."""
    with relay_server(*proxy_args(upstream), env={"OPENAI_API_KEY": UPSTREAM_KEY}) as server:
        async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await rec.until("session.created")
            for text in ("one", "two"):
                await user_text(rec, text)
                await rec.send({"type": "response.create"})
                await rec.until("response.done")
    # The server has stopped (after draining): every line it wrote is in.
    turns = [line for line in server.lines if " turn session_id=" in line]
    assert len(turns) == 2 and all("first_delta_ms=" in line for line in turns)
    (summary,) = [line for line in server.lines if "proxy.summary" in line]
    assert "responses=2" in summary and "turns=2" in summary and "output_tokens=" in summary
