"""Session and response fields against the mock backend through the official SDK (issue
15, part A): a forced tool choice, a refused MCP tool choice, null fields, and the idle
timeout counted from the end of the reply's playback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.e2e.client import WEATHER_TOOL, Recorder, decode_audio, user_text
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client_for(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url)


async def configure(rec: Recorder, **session: Any) -> dict[str, Any]:
    await rec.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await rec.until("session.updated")


async def test_forced_function_and_none(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        time_tool = {**WEATHER_TOOL, "name": "get_time"}
        await configure(rec, tools=[WEATHER_TOOL, time_tool], output_modalities=["text"])
        await user_text(rec, "What is the weather in Paris?")
        # The script calls get_weather; forcing get_time makes that call instead.
        forced = {"type": "function", "name": "get_time"}
        await rec.send({"type": "response.create", "response": {"tool_choice": forced}})
        done = (await rec.until("response.done"))["response"]
        assert [o["type"] for o in done["output"]] == ["function_call"]
        assert done["output"][0]["name"] == "get_time"
        # "none": the script's reply without its call.
        await rec.send({"type": "response.create", "response": {"tool_choice": "none"}})
        done = (await rec.until("response.done"))["response"]
        assert [o["type"] for o in done["output"]] == ["message"]
        rec.check()


async def test_mcp_tool_choice_fails_the_response(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        mcp = {"type": "mcp", "server_label": "wiki", "server_url": "https://example.com/mcp"}
        await configure(rec, tools=[mcp], tool_choice={"type": "mcp", "server_label": "wiki"})
        await user_text(rec, "Search the wiki.")
        await rec.send({"type": "response.create"})
        done = (await rec.until("response.done"))["response"]
        assert done["status"] == "failed"
        assert "MCP" in done["status_details"]["error"]["message"]
        assert (await rec.until("error"))["error"]["code"] == "invalid_value"
        rec.check()


async def test_null_fields_are_not_given(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, instructions="Be brief.", max_output_tokens=3)
        updated = await configure(rec, instructions=None, tools=None, max_output_tokens=None)
        assert updated["session"]["instructions"] == "Be brief."
        assert updated["session"]["max_output_tokens"] == 3
        await user_text(rec, "one two three four five")
        await rec.send(
            {
                "type": "response.create",
                "response": {"instructions": None, "output_modalities": None, "input": None},
            }
        )
        done = (await rec.until("response.done"))["response"]
        assert done["status"] == "incomplete" and done["max_output_tokens"] == 3
        assert done["status_details"]["reason"] == "max_output_tokens"
        rec.check()


async def test_idle_timeout_counts_from_the_end_of_playback(mock_server: RunningServer) -> None:
    loop = asyncio.get_running_loop()
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        turn = {"type": "server_vad", "idle_timeout_ms": 5000}
        await configure(rec, audio={"input": {"turn_detection": turn}})
        await user_text(rec, "tell me a long story")
        await rec.send({"type": "response.create"})
        await rec.until("response.done", timeout_s=30)
        done_at = loop.time()
        audio_ms = len(decode_audio(rec.events)) / 48  # audio/pcm: 48 bytes a millisecond
        assert audio_ms > 1000
        await rec.until("input_audio_buffer.timeout_triggered", timeout_s=30)
        waited_ms = (loop.time() - done_at) * 1000
        # OpenAI: "set to the response.done time plus audio playback duration".
        # done_at is when this client took response.done, after the server sent it: up to a
        # second later on a slow machine (the SDK validates every audio delta first). A
        # timeout that ignored playback would still come audio_ms too early.
        slack_ms = min(1000, audio_ms / 2)
        assert 5000 + audio_ms - slack_ms <= waited_ms <= 5000 + audio_ms + 2000, (
            waited_ms,
            audio_ms,
        )
        await rec.until("response.done", timeout_s=30)
        rec.check()


async def test_the_voice_is_fixed_once_the_assistant_has_spoken(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        updated = await configure(rec, audio={"output": {"voice": "marin"}})
        assert updated["session"]["audio"]["output"]["voice"] == "marin"
        await configure(rec, audio={"output": {"voice": "cedar"}})  # nothing spoken yet
        await user_text(rec, "Say something.")
        await rec.send({"type": "response.create"})
        await rec.until("response.output_audio.delta")
        await rec.until("response.done")
        await rec.send(
            {
                "type": "session.update",
                "event_id": "v1",
                "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}},
            }
        )
        error = (await rec.until("error"))["error"]
        assert error["code"] == "cannot_update_voice" and error["event_id"] == "v1"
        rec.check()
