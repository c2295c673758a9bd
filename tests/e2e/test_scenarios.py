"""Scenarios that every backend passes the same way, written once and run through the
official ``openai`` SDK against each server on loopback (tests/e2e/conftest.py):

- ``mock``: ``realtime-relay serve --backend mock`` with tests/e2e/mock_script.yaml;
- ``proxy``: ``--backend openai`` in front of that mock as its upstream.

Every received event is validated against the SDK's types and each recorded stream is
checked against the event-stream invariants (tests/invariants.py). What only one
backend does is tested in test_mock_sdk.py and test_proxy.py; the local pipeline, whose
replies come from real models, in tests/local.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from openai import AsyncOpenAI

from models.audio import rms
from tests.e2e.client import (
    WEATHER_TOOL,
    Recorder,
    append_audio,
    decode_audio,
    long_audio_response,
    silence,
    speech,
    user_text,
)
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Backend:
    server: RunningServer
    beta_model: str  # the proxy's policy allows only the gpt-realtime models


@pytest.fixture(params=["mock", "proxy"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "mock":
        return Backend(request.getfixturevalue("mock_server"), "gpt-4o-realtime-preview")
    return Backend(request.getfixturevalue("proxy"), "gpt-realtime")


def client_for(backend: Backend) -> AsyncOpenAI:
    # The proxy wants this key; the mock server takes any.
    return AsyncOpenAI(api_key="sk-client", base_url=backend.server.base_url)


async def test_text_turn(backend: Backend) -> None:
    async with client_for(backend).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert created["session"]["type"] == "realtime"
        assert created["session"]["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        await rec.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text"]},
            }
        )
        updated = await rec.until("session.updated")
        assert updated["session"]["output_modalities"] == ["text"]
        await user_text(rec, "hello relay")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        text = "".join(e["delta"] for e in rec.of_type("response.output_text.delta"))
        assert text == "hello relay"
        assert done["response"]["usage"]["output_tokens"] > 0
        assert not rec.of_type("error")
        rec.check()


async def test_spoken_reply_to_a_text_turn(backend: Backend) -> None:
    async with client_for(backend).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        await user_text(rec, "hello there")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        transcript = "".join(
            e["delta"] for e in rec.of_type("response.output_audio_transcript.delta")
        )
        assert transcript == "hello there"
        audio = decode_audio(rec.events)
        assert len(audio) % 2 == 0 and rms(audio) > 500
        assert not rec.of_type("error")
        rec.check()


async def test_audio_turn_with_server_vad(backend: Backend) -> None:
    async with client_for(backend).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await rec.until("session.updated")
        await append_audio(
            rec, silence(400) + speech("hello there how are you today") + silence(800)
        )
        started = await rec.until("input_audio_buffer.speech_started")
        stopped = await rec.until("input_audio_buffer.speech_stopped")
        committed = await rec.until("input_audio_buffer.committed")
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        audio = decode_audio(rec.events)
        assert len(audio) % 2 == 0 and rms(audio) > 500
        transcript = "".join(
            e["delta"] for e in rec.of_type("response.output_audio_transcript.delta")
        )
        assert transcript.startswith("I heard ") and transcript.endswith("seconds of audio.")
        if not rec.of_type("conversation.item.input_audio_transcription.completed"):
            await rec.until("conversation.item.input_audio_transcription.completed")
        completed = rec.of_type("conversation.item.input_audio_transcription.completed")[0]
        assert completed["item_id"] == committed["item_id"]
        assert completed["usage"]["type"] == "duration"
        assert not rec.of_type("error")
        rec.check()


async def test_function_call_round_trip(backend: Backend) -> None:
    async with client_for(backend).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [WEATHER_TOOL],
                },
            }
        )
        await rec.until("session.updated")
        await user_text(rec, "what is the weather in Paris?")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        call = done["response"]["output"][-1]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert call["call_id"].startswith("call_")
        args_done = rec.of_type("response.function_call_arguments.done")[0]
        assert args_done["arguments"] == '{"city": "Paris"}' and args_done["name"] == "get_weather"
        assert args_done["call_id"] == call["call_id"]
        await rec.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "sunny, 21 C",
                },
            }
        )
        await rec.until("conversation.item.done")
        await rec.send({"type": "response.create"})
        second = await rec.until("response.done")
        text = second["response"]["output"][0]["content"][0]["text"]
        assert text == "The weather tool said: sunny, 21 C"
        rec.check()


async def test_barge_in(backend: Backend) -> None:
    async with client_for(backend).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await long_audio_response(rec)
        await append_audio(rec, speech("wait stop please"))
        await rec.until("input_audio_buffer.speech_started")
        done = await rec.until("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        await append_audio(rec, silence(800))
        await rec.until("input_audio_buffer.committed")
        second = await rec.until("response.done")
        assert second["response"]["status"] == "completed"
        rec.check()


async def test_beta_client(backend: Backend) -> None:
    server = backend.server
    # The beta client always dials wss unless websocket_base_url is set.
    client = client_for(backend).with_options(websocket_base_url=server.ws_base_url)
    async with client.beta.realtime.connect(model=backend.beta_model) as conn:
        rec = Recorder(conn, beta=True)
        created = await rec.until("session.created")
        assert created["session"]["modalities"] == ["audio", "text"]
        assert created["session"]["input_audio_format"] == "pcm16"
        await rec.until("conversation.created")
        await rec.send(
            {"type": "session.update", "session": {"modalities": ["text"], "temperature": 0.7}}
        )
        updated = await rec.until("session.updated")
        assert updated["session"]["modalities"] == ["text"]
        assert updated["session"]["temperature"] == 0.7
        await rec.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi beta"}],
                },
            }
        )
        await rec.until("conversation.item.created")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0] == {"type": "text", "text": "hi beta"}
        assert rec.of_type("response.text.delta") and rec.of_type("response.text.done")
        assert not rec.of_type("conversation.item.done")
        rec.check()
