"""Per-key rate limits and ``rate_limits.updated`` through the official SDK, against
``serve --backend mock`` on loopback (relay/ratelimit.py).

Every event is validated against the SDK's strict server-event union, and each stream
against the event-stream invariants (tests/invariants.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI

from relay.ratelimit import UNLIMITED
from tests.e2e.client import Recorder, append_audio, silence, speech, user_message, user_text
from tests.e2e.conftest import MOCK_ARGS
from tests.e2e.test_webrtc import Microphone, until
from tests.invariants import validate_with_sdk
from tests.servers import RunningServer, relay_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEY, OTHER_KEY, CALL_KEY = "sk-rate-a", "sk-rate-b", "sk-rate-c"
REQUESTS = 3  # per minute: one refills every 20 s, longer than these tests wait


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    args = (
        "--api-keys",
        f"{KEY},{OTHER_KEY},{CALL_KEY}",
        "--rate-limit-requests-per-min",
        str(REQUESTS),
    )
    with relay_server(*MOCK_ARGS, *args) as server:
        yield server


def by_name(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {limit["name"]: limit for limit in event["rate_limits"]}


async def reply(rec: Recorder, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A text turn and its response; its ``response.done`` and the ``rate_limits.updated``
    that comes next."""
    await user_text(rec, text)
    await rec.send({"type": "response.create"})
    done = await rec.until("response.done")
    updated = await rec.next()
    assert updated["type"] == "rate_limits.updated"  # right after the response
    return done, updated


MANUAL = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


async def test_requests_count_per_key_across_sessions_and_ephemeral_keys(
    limited: RunningServer,
) -> None:
    async with AsyncOpenAI(api_key=KEY, base_url=limited.base_url) as client:
        secret = await client.realtime.client_secrets.create(session={"type": "realtime"})
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            done, updated = await reply(rec, "hello")
            assert done["response"]["status"] == "completed"
            first = by_name(updated)
            assert first["requests"]["limit"] == REQUESTS
            assert first["requests"]["remaining"] == REQUESTS - 1
            assert first["tokens"]["limit"] == first["tokens"]["remaining"] == UNLIMITED
            rec.check()
        # A browser's ephemeral key counts against the key that minted it.
        async with AsyncOpenAI(api_key=secret.value, base_url=limited.base_url) as browser:
            async with browser.realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                remaining = [by_name((await reply(rec, t))[1]) for t in ("one", "two")]
                assert [r["requests"]["remaining"] for r in remaining] == [1, 0]
                assert 0 < remaining[-1]["requests"]["reset_seconds"] <= 60
                await rec.send({"type": "response.create", "event_id": "evt_over"})
                error = await rec.until("error")
                assert error["error"]["code"] == "rate_limit_exceeded"
                assert error["error"]["type"] == "requests"
                assert error["error"]["event_id"] == "evt_over"
                rec.check()
                assert len(rec.of_type("response.created")) == 2  # the third never started
    # Another key has its own limit.
    async with AsyncOpenAI(api_key=OTHER_KEY, base_url=limited.base_url) as other:
        async with other.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            _, updated = await reply(rec, "hi")
            assert by_name(updated)["requests"]["remaining"] == REQUESTS - 1


async def test_a_response_server_vad_starts_past_the_limit_is_cancelled(
    limited: RunningServer,
) -> None:
    async with AsyncOpenAI(api_key=OTHER_KEY, base_url=limited.base_url) as client:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await rec.until("session.created")
            await rec.send({"type": "session.update", "session": MANUAL})
            await rec.until("session.updated")
            while by_name((await reply(rec, "use it up"))[1])["requests"]["remaining"] > 0:
                pass
            vad = {"type": "server_vad", "silence_duration_ms": 200}
            audio = {"input": {"turn_detection": vad}}
            session = {"type": "realtime", "audio": audio}
            await rec.send({"type": "session.update", "session": session})
            await rec.until("session.updated")
            await append_audio(rec, silence(200) + speech("one two three") + silence(800))
            created = await rec.until("response.created")  # the session's own response
            error = await rec.until("error")
            assert error["error"]["code"] == "rate_limit_exceeded"
            assert error["error"]["type"] == "requests"
            done = await rec.until("response.done")
            assert done["response"]["id"] == created["response"]["id"]
            assert done["response"]["status"] == "cancelled"
            updated = await rec.next()
            assert updated["type"] == "rate_limits.updated"
            assert by_name(updated)["requests"]["remaining"] == 0
            rec.check()


@pytest.fixture(scope="module")
def token_limited() -> Iterator[RunningServer]:
    with relay_server(*MOCK_ARGS, "--rate-limit-tokens-per-min", "20") as server:
        yield server


async def test_tokens_used_up_refuse_the_next_response(token_limited: RunningServer) -> None:
    async with AsyncOpenAI(api_key="sk-any", base_url=token_limited.base_url) as client:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            done, updated = await reply(rec, "tell me a long story")
            used = done["response"]["usage"]["total_tokens"]
            assert used > 20  # the mock's story is longer than the limit
            tokens = by_name(updated)["tokens"]
            assert tokens["limit"] == 20 and tokens["remaining"] == 0
            assert tokens["reset_seconds"] == pytest.approx(used * 3, abs=1.0)  # 20 a minute
            assert by_name(updated)["requests"]["remaining"] == UNLIMITED
            await rec.send({"type": "response.create", "event_id": "evt_tokens"})
            error = await rec.until("error")
            assert (error["error"]["type"], error["error"]["event_id"]) == ("tokens", "evt_tokens")
            rec.check()


async def test_a_webrtc_call_gets_the_same_limits_on_its_data_channel(
    limited: RunningServer,
) -> None:
    auth = {"Authorization": f"Bearer {CALL_KEY}"}
    async with httpx.AsyncClient(timeout=20, headers=auth) as http:
        pc = RTCPeerConnection()
        channel = pc.createDataChannel("oai-events")
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        channel.on("message", lambda message: events.put_nowait(json.loads(message)))
        pc.addTrack(Microphone(silence(100)))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await http.post(
            f"{limited.base_url}/realtime/calls",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
        assert answer.status_code == 201, answer.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
        seen: list[str] = []
        await until(events, "session.created", seen)
        remaining = []
        for n in range(REQUESTS):
            channel.send(json.dumps(user_message(f"hello {n}")))
            channel.send(json.dumps({"type": "response.create"}))
            await until(events, "response.done", seen)
            updated = await until(events, "rate_limits.updated", seen)
            validate_with_sdk(updated)
            remaining.append(by_name(updated)["requests"]["remaining"])
        assert remaining == [2, 1, 0]
        channel.send(json.dumps({"type": "response.create", "event_id": "evt_call"}))
        error = await until(events, "error", seen)
        assert (error["error"]["code"], error["error"]["event_id"]) == (
            "rate_limit_exceeded",
            "evt_call",
        )
        await pc.close()


async def test_behind_the_proxy_one_event_follows_each_response(proxy: RunningServer) -> None:
    """The upstream's own ``rate_limits.updated`` (OpenAI's, here a relay's) is folded into
    the relay's: one per response, never two."""
    async with AsyncOpenAI(api_key="sk-client", base_url=proxy.base_url) as client:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            for text in ("hello", "again"):
                _, updated = await reply(rec, text)
                assert by_name(updated)["tokens"]["remaining"] == UNLIMITED
            await user_text(rec, "one more")  # answered by conversation.item.added/done
            await rec.until("conversation.item.done")
            assert len(rec.of_type("rate_limits.updated")) == 2
            assert len(rec.of_type("response.done")) == 2
            rec.check()
