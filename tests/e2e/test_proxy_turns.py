"""``--backend openai --local-turn-detection``: the proxy detects the client's turns itself
and sends the upstream only the speech (transceiver/proxy/turns.py); and ``--fallback``
sessions judge semantic_vad's pauses with the server's end-of-turn model.

The proxy is a transceiver run alone behind a relay (bench/proxy_turns.py), so that the
tests read its ``realtime_transceiver_upstream_audio_seconds_total``; the upstream is the
mock (``MOCK_ARGS``), or one that records what the proxy sends it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench.proxy_turns import UTTERANCES, audio_seconds, conversation, turn_proxy
from bench.proxy_turns import stream as bench_stream
from models.tts import PiperTts
from models.turn import bundled_turn_model_path
from tests.e2e.client import Recorder, append_audio, silence
from tests.e2e.conftest import UPSTREAM_KEY
from tests.e2e.test_proxy import client_for
from tests.e2e.test_proxy_fallback import fallback_proxy, refusing_upstream
from tests.e2e.test_scenarios import (
    Backend,
    test_audio_turn_with_server_vad,
    test_barge_in,
    test_beta_client,
    test_function_call_round_trip,
    test_text_turn,
)
from tests.e2e.test_semantic_vad import spoken
from tests.servers import RunningServer
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def stream(rec: Recorder, audio: bytes) -> None:
    await bench_stream(rec.send, audio)


async def test_only_speech_goes_upstream_and_the_client_sees_its_own_turns(
    upstream: RunningServer,
) -> None:
    url = f"{upstream.ws_base_url}/realtime"
    with turn_proxy(url, "--local-turn-detection", key=UPSTREAM_KEY) as (relay, member):
        audio, spans = conversation()
        async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            created = await rec.until("session.created")
            # The client is shown its turn detection (the upstream's default), not null.
            assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
            update = {"type": "server_vad", "silence_duration_ms": 600}
            await rec.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["text"],
                        "audio": {"input": {"turn_detection": update}},
                    },
                }
            )
            updated = await rec.until("session.updated")
            shown = updated["session"]["audio"]["input"]["turn_detection"]
            assert shown["type"] == "server_vad" and shown["silence_duration_ms"] == 600
            await stream(rec, audio)

            async def answered() -> bool:
                with contextlib.suppress(TimeoutError):
                    await rec.next(0.5)
                done = rec.of_type("response.done")
                return len(done) == len(UTTERANCES) and len(
                    rec.of_type("conversation.item.done")
                ) >= 2 * len(UTTERANCES)

            await eventually(answered, timeout_s=30)
        started = rec.of_type("input_audio_buffer.speech_started")
        stopped = rec.of_type("input_audio_buffer.speech_stopped")
        committed = rec.of_type("input_audio_buffer.committed")
        assert len(started) == len(stopped) == len(committed) == len(UTTERANCES)
        for (begin, end), s, t, c in zip(spans, started, stopped, committed, strict=True):
            # The client's timeline: all the audio it sent, silences included.
            assert begin - 400 <= s["audio_start_ms"] <= begin + 200, (begin, s)
            assert end - 200 <= t["audio_end_ms"] <= end + 100, (end, t)
            assert s["item_id"] == t["item_id"] == c["item_id"]
        users = [
            e["item"]["id"]
            for e in rec.of_type("conversation.item.added")
            if e["item"]["role"] == "user"
        ]
        assert users == [c["item_id"] for c in committed]  # the ids the client was told
        assert all(d["response"]["status"] == "completed" for d in rec.of_type("response.done"))
        rec.check()
        seconds = await audio_seconds(member)
    received = seconds["received"]
    assert received == pytest.approx(len(audio) / 48_000, abs=0.01)
    assert seconds["sent"] <= 0.6 * received, seconds  # at least 40% fewer seconds upstream


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An upstream that starts sessions, echoes session updates and records every frame."""
    frames: list[dict[str, Any]] = []

    async def handler(connection: ServerConnection) -> None:
        session = {"type": "realtime", "id": "sess_up", "object": "realtime.session"}
        await connection.send(
            json.dumps({"type": "session.created", "event_id": "event_1", "session": session})
        )
        async for frame in connection:
            event = json.loads(frame)
            frames.append(event)
            if event.get("type") == "session.update":
                update = {
                    "type": "session.updated",
                    "event_id": "event_2",
                    "session": event["session"],
                }
                await connection.send(json.dumps(update))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime", frames


@pytest.mark.parametrize("local", [False, True])
async def test_what_the_upstream_is_told_of_turn_detection(local: bool) -> None:
    """Off, the client's ``semantic_vad`` goes upstream as sent; on, the upstream is told
    ``turn_detection: null`` and the client still sees its own."""
    td = {"type": "semantic_vad", "eagerness": "high", "create_response": False}
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
    }
    extra = ("--local-turn-detection",) if local else ()
    async with recording_upstream() as (url, frames):
        with turn_proxy(url, *extra, key=UPSTREAM_KEY) as (relay, member):
            async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                await rec.send(update)
                updated = await rec.until("session.updated")
                assert updated["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "high"
                await append_audio(rec, silence(1000), chunk_ms=100)
                await rec.send({"type": "input_audio_buffer.clear"})
                await eventually(
                    lambda: any(f["type"] == "input_audio_buffer.clear" for f in frames)
                )
            seconds = await audio_seconds(member)
    updates = [f for f in frames if f["type"] == "session.update"]
    appended = [f for f in frames if f["type"] == "input_audio_buffer.append"]
    assert seconds["received"] == pytest.approx(1.0)
    if local:
        # The start configuration turns the upstream's detection off, and so does the update.
        assert [u["session"]["audio"]["input"]["turn_detection"] for u in updates] == [None, None]
        assert seconds["sent"] < 0.6  # silence: only what a next turn's padding might need
    else:
        assert updates == [update]  # exactly what the client sent
        assert len(appended) == 10 and seconds["sent"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def voice() -> Iterator[PiperTts]:
    yield PiperTts(varied=False)


needs_model = pytest.mark.skipif(
    not bundled_turn_model_path().is_file(),
    reason="no end-of-turn model (scripts/fetch-smart-turn)",
)


async def finished_question(server: RunningServer, voice: PiperTts) -> None:
    """A complete question, then 1 s of silence, with semantic_vad eagerness ``low`` (8 s
    at most): only the end-of-turn model's "finished" can end this turn."""
    question = silence(300) + spoken(voice, "What is the weather like in Paris today?")
    td = {"type": "semantic_vad", "eagerness": "low"}
    session: dict[str, Any] = {"type": "realtime", "output_modalities": ["text"]}
    session["audio"] = {"input": {"turn_detection": td}}
    async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send({"type": "session.update", "session": session})
        await rec.until("session.updated")
        await append_audio(rec, question + silence(1000), chunk_ms=100)
        stopped = await rec.until("input_audio_buffer.speech_stopped", timeout_s=10)
        committed = await rec.until("input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"]
        assert stopped["audio_end_ms"] <= len(question) / 48 + 20
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        rec.check()


@needs_model
async def test_semantic_vad_ends_the_turn_at_the_models_word(
    upstream: RunningServer, voice: PiperTts
) -> None:
    url = f"{upstream.ws_base_url}/realtime"
    with turn_proxy(url, "--local-turn-detection", key=UPSTREAM_KEY) as (relay, _):
        await finished_question(relay, voice)


@needs_model
async def test_the_fallback_judges_semantic_vad_with_the_servers_model(voice: PiperTts) -> None:
    """``--fallback``: the fallback's sessions use the end-of-turn model the server built."""
    async with refusing_upstream("unreachable") as url:
        with fallback_proxy(url) as (relay, _):
            await finished_question(relay, voice)


@needs_model
async def test_vad_silero_ends_a_turn_in_noise_through_the_proxy(
    upstream: RunningServer, voice: PiperTts
) -> None:
    """``--local-turn-detection --vad silero``: the proxy's speech detector hears the end of
    a sentence under white noise (10 dB below it), which webrtcvad alone takes for speech."""
    said = spoken(voice, "Please book a table for two at eight tonight.")
    clean = np.frombuffer(silence(300) + said + silence(1200), dtype="<i2").astype(np.float64)
    level = float(np.sqrt(np.mean(clean[np.abs(clean) > 300] ** 2))) / 10**0.5
    hiss = np.random.default_rng(7).standard_normal(clean.size) * level
    audio = np.clip(clean + hiss, -32768, 32767).astype("<i2").tobytes()
    url = f"{upstream.ws_base_url}/realtime"
    with turn_proxy(url, "--local-turn-detection", "--vad", "silero", key=UPSTREAM_KEY) as (
        relay,
        _,
    ):
        async with client_for(relay).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            session = {"type": "realtime", "output_modalities": ["text"]}
            await rec.send({"type": "session.update", "session": session})
            await rec.until("session.updated")
            await append_audio(rec, audio, chunk_ms=100)
            stopped = await rec.until("input_audio_buffer.speech_stopped", timeout_s=10)
            committed = await rec.until("input_audio_buffer.committed")
            assert committed["item_id"] == stopped["item_id"]
            assert stopped["audio_end_ms"] <= (300 + len(said) / 48) + 100
            await rec.until("response.done")
            rec.check()


# The shared scenarios (test_scenarios.py) again, with the proxy detecting the turns: an
# audio turn with its transcript, barge-in, text and function turns, a beta client.
@pytest.fixture(scope="module")
def local_proxy(upstream: RunningServer) -> Iterator[RunningServer]:
    url = f"{upstream.ws_base_url}/realtime"
    with turn_proxy(url, "--local-turn-detection", key=UPSTREAM_KEY) as (relay, _):
        yield relay


@pytest.fixture
def backend(local_proxy: RunningServer) -> Backend:
    return Backend(local_proxy, "gpt-realtime")


__all__ = [
    "test_audio_turn_with_server_vad",
    "test_barge_in",
    "test_beta_client",
    "test_function_call_round_trip",
    "test_text_turn",
]
