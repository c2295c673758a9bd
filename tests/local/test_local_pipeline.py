"""The local pipeline with the real bundled models, driven by the official SDK."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI

from models.audio import alaw_decode, rms
from tests.chat_server import STORY, TOOL_ANSWER, ChatServer
from tests.e2e.client import (
    WEATHER_TOOL,
    Recorder,
    append_audio,
    decode_audio,
    silence,
    user_text,
)
from tests.local.conftest import Speaker
from tests.servers import RunningServer, relay_server

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def client_for(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url)


async def test_spoken_question_gets_spoken_answer(
    local_server: RunningServer, speak: Speaker
) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
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
            rec, silence(300) + speak("What is the capital of France?") + silence(900)
        )
        committed = await rec.until("input_audio_buffer.committed", timeout_s=30)
        done = await rec.until("response.done", timeout_s=120)
        assert done["response"]["status"] == "completed"
        completed = [
            e for e in rec.of_type("conversation.item.input_audio_transcription.completed")
        ]
        if not completed:
            completed = [await rec.until("conversation.item.input_audio_transcription.completed")]
        assert completed[0]["item_id"] == committed["item_id"]
        assert {"capital", "france"} <= words(completed[0]["transcript"]), completed[0][
            "transcript"
        ]
        assert completed[0]["usage"]["seconds"] > 1.0
        audio = decode_audio(rec.events)
        assert len(audio) > 24_000 and rms(audio) > 300  # over half a second, not silence
        transcript = "".join(
            e["delta"] for e in rec.of_type("response.output_audio_transcript.delta")
        )
        assert transcript.strip()
        rec.check()


async def test_transcription_session(local_server: RunningServer, speak: Speaker) -> None:
    client = client_for(local_server)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
                },
            }
        )
        await rec.until("session.updated")
        speech = speak("The quick brown fox jumps over the lazy dog.")
        await append_audio(rec, silence(200) + speech + silence(900))
        completed = await rec.until("conversation.item.input_audio_transcription.completed", 60)
        # Allow one misheard word: tiny.en on piper speech says "quit" for "quick" now and then.
        key = {"quick", "brown", "fox", "lazy", "dog"}
        assert len(key - words(completed["transcript"])) <= 1, completed["transcript"]
        assert rec.of_type("conversation.item.input_audio_transcription.delta")
        assert not [e for e in rec.events if e["type"].startswith("response.")]
        rec.check()


async def test_text_only_turn(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await user_text(rec, "Say hello to me.")
        await rec.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await rec.until("response.done", timeout_s=120)
        assert done["response"]["status"] == "completed"
        assert rec.of_type("response.output_text.delta")
        assert not rec.of_type("response.output_audio.delta")
        assert done["response"]["output"][0]["content"][0]["text"].strip()
        rec.check()


async def test_g711_output(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcma"}}},
                },
            }
        )
        await rec.until("session.updated")
        await user_text(rec, "Say hello to me.")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done", timeout_s=120)
        assert done["response"]["status"] == "completed"
        alaw = decode_audio(rec.events)
        assert len(alaw) > 4000 and rms(alaw_decode(alaw)) > 300
        rec.check()


async def test_barge_in_truncates_what_the_llm_sees(
    url_llm_server: RunningServer, scripted_llm: ChatServer, speak: Speaker
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await user_text(rec, "Tell me a story.")
        await rec.send({"type": "response.create"})
        first = await rec.until("response.output_audio.delta", timeout_s=60)
        await append_audio(rec, speak("Stop, please.") + silence(900))
        await rec.until("input_audio_buffer.speech_started", timeout_s=30)
        cancelled = await rec.until("response.done", timeout_s=30)
        assert cancelled["response"]["id"] == first["response_id"]
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        heard = cancelled["response"]["output"][0]["content"][0]["transcript"]
        assert heard and len(heard) < len(STORY) and STORY.startswith(heard)
        second = await rec.until("response.done", timeout_s=60)
        assert second["response"]["status"] == "completed"
        # The LLM's next history holds only what was spoken before the interruption.
        history = scripted_llm.requests[-1]["messages"]
        assistant = [m for m in history if m["role"] == "assistant"]
        assert assistant and assistant[-1]["content"] == heard
        assert {"stop", "please"} <= words(history[-1]["content"])
        rec.check()


async def test_function_call_through_url_engine(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "tools": [WEATHER_TOOL],
                },
            }
        )
        await rec.until("session.updated")
        await user_text(rec, "What is the weather in Paris?")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done", timeout_s=60)
        call = done["response"]["output"][-1]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert call["arguments"] == '{"city": "Paris"}' and call["call_id"] == "call_scripted0001"
        deltas = rec.of_type("response.function_call_arguments.delta")
        assert "".join(d["delta"] for d in deltas) == call["arguments"]
        assert scripted_llm.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
        await rec.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": '{"sky": "sunny"}',
                },
            }
        )
        await rec.until("conversation.item.done")
        await rec.send({"type": "response.create"})
        answer = await rec.until("response.done", timeout_s=60)
        assert answer["response"]["output"][0]["content"][0]["transcript"] == TOOL_ANSWER
        history = scripted_llm.requests[-1]["messages"]
        assert history[-1] == {
            "role": "tool",
            "tool_call_id": "call_scripted0001",
            "content": '{"sky": "sunny"}',
        }
        assert history[-2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
        rec.check()


@pytest.fixture(scope="module")
def broken_llm_server() -> Iterator[RunningServer]:
    with relay_server("--backend", "local", "--llm-url", "http://127.0.0.1:9/v1") as server:
        yield server


async def test_failed_engine_fails_the_response_not_the_session(
    broken_llm_server: RunningServer,
) -> None:
    async with client_for(broken_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await user_text(rec, "Hello?")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done", timeout_s=60)
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["type"] == "server_error"
        assert (await rec.until("error"))["error"]["type"] == "server_error"
        await rec.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "Still here."},
            }
        )
        assert (await rec.until("session.updated"))["session"]["instructions"] == "Still here."
        rec.check()
