"""Session and response fields through the official SDK against the local pipeline (issue
15, part A): null as "not given", tool_choice, max_output_tokens, prompt, truncation and
the beta temperature, with the embedded model and with a scripted chat-completions URL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.chat_server import STORY, ChatServer
from tests.e2e.client import WEATHER_TOOL, Recorder, decode_audio, user_text
from tests.servers import RunningServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]


def client_for(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url)


async def configure(rec: Recorder, **session: Any) -> dict[str, Any]:
    await rec.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await rec.until("session.updated")


async def reply(rec: Recorder, timeout_s: float = 120, **params: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.create"}
    if params:
        event["response"] = params
    await rec.send(event)
    done: dict[str, Any] = (await rec.until("response.done", timeout_s=timeout_s))["response"]
    return done


async def test_null_instructions_take_the_sessions(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    """What an agent framework sends on every reply without instructions of its own."""
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, instructions="You are a pirate.", output_modalities=["text"])
        await user_text(rec, "Tell me a story.")
        done = await reply(rec, instructions=None, tools=None, max_output_tokens=None, audio=None)
        assert done["status"] == "completed" and not rec.of_type("error")
        assert scripted_llm.requests[-1]["messages"][0] == {
            "role": "system",
            "content": "You are a pirate.",
        }
        rec.check()


async def test_forced_function_with_the_embedded_model(local_server: RunningServer) -> None:
    """A greeting has nothing to do with the weather: only the grammar makes it a call."""
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        forced = {"type": "function", "name": "get_weather"}
        updated = await configure(
            rec, tools=[WEATHER_TOOL], tool_choice=forced, output_modalities=["text"]
        )
        assert updated["session"]["tool_choice"] == forced
        await user_text(rec, "Hello, my name is Ann.")
        done = await reply(rec)
        assert done["status"] == "completed", done
        call = done["output"][-1]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert isinstance(json.loads(call["arguments"]), dict)
        # "required" with the embedded model: a call of one of the tools, too.
        done = await reply(rec, tool_choice="required")
        assert done["output"][-1]["type"] == "function_call", done
        rec.check()


async def test_tool_choice_reaches_a_url_engine(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, tools=[WEATHER_TOOL], output_modalities=["text"])
        await user_text(rec, "What is the weather in Paris?")
        done = await reply(rec, tool_choice={"type": "function", "name": "get_weather"})
        assert done["output"][-1]["name"] == "get_weather"
        body = scripted_llm.requests[-1]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        # "none": no tools are offered at all, so the scripted server tells its story.
        await rec.send({"type": "conversation.item.delete", "item_id": done["output"][-1]["id"]})
        await rec.until("conversation.item.deleted")
        done = await reply(rec, tool_choice="none")
        assert done["output"][-1]["type"] == "message"
        assert "tools" not in scripted_llm.requests[-1]
        rec.check()


async def test_malformed_tool_choice_is_refused(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        bad = {"type": "session.update", "session": {"type": "realtime", "tool_choice": {"foo": 1}}}
        await rec.send({**bad, "event_id": "bad_choice"})
        error = (await rec.until("error"))["error"]
        assert error["code"] == "invalid_value" and error["param"] == "session.tool_choice"
        assert error["event_id"] == "bad_choice"
        await rec.send({"type": "response.create", "response": {"tool_choice": "sometimes"}})
        assert (await rec.until("error"))["error"]["param"] == "response.tool_choice"
        assert not rec.of_type("session.updated") and not rec.of_type("response.created")
        rec.check()


async def test_max_output_tokens_ends_incomplete(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await user_text(rec, "Tell me a long story about a dragon and a princess.")
        done = await reply(rec, max_output_tokens=5, output_modalities=["text"])
        assert done["status"] == "incomplete", done
        assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        assert done["max_output_tokens"] == 5
        text = done["output"][0]["content"][0]["text"]
        assert 0 < len(text.split()) <= 5  # five tokens are at most five words
        rec.check()


async def test_max_output_tokens_with_a_url_engine(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, max_output_tokens=5)
        await user_text(rec, "Tell me a story.")
        done = await reply(rec)  # spoken: five words of audio
        assert done["status"] == "incomplete" and scripted_llm.requests[-1]["max_tokens"] == 5
        assert done["output"][0]["content"][0]["transcript"] == " ".join(STORY.split()[:5])
        await configure(rec, output_modalities=["text"])
        # "inf": up to the context window; the story ends by itself.
        done = await reply(rec, max_output_tokens="inf")
        assert done["status"] == "completed" and scripted_llm.requests[-1]["max_tokens"] > 1000
        rec.check()


async def test_prompt_resolves_with_its_variables(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        prompt = {"id": "greeter", "variables": {"company": "ACME", "name": "Ann"}}
        updated = await configure(rec, prompt=prompt, output_modalities=["text"])
        assert updated["session"]["prompt"]["id"] == "greeter"
        await user_text(rec, "Hi.")
        await reply(rec)
        system = scripted_llm.requests[-1]["messages"][0]
        assert system["content"] == "You are the voice of ACME. Greet Ann by name."
        version = {"id": "support", "version": "2", "variables": {"product": "rockets"}}
        await reply(rec, prompt=version, instructions="Be brief.")
        system = scripted_llm.requests[-1]["messages"][0]
        assert system["content"] == "Version two: help with rockets.\n\nBe brief."
        for bad, param in (
            ({"id": "nope"}, "session.prompt.id"),
            ({"id": "greeter", "variables": {"company": "ACME"}}, "session.prompt.variables"),
        ):
            await rec.send({"type": "session.update", "session": {"prompt": bad}})
            error = (await rec.until("error"))["error"]
            assert error["code"] == "invalid_value" and error["param"] == param
        rec.check()


async def test_prompt_without_a_library_is_refused(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send({"type": "session.update", "session": {"prompt": {"id": "greeter"}}})
        error = (await rec.until("error"))["error"]
        assert error["param"] == "session.prompt" and "--prompts" in error["message"]
        rec.check()


LONG_TURN = "The quick brown fox jumps over the lazy dog near the river bank. " * 40


async def fill(rec: Recorder, turns: int) -> None:
    for _ in range(turns):
        await user_text(rec, LONG_TURN)


async def test_truncation_disabled_fails_when_the_context_is_full(
    local_server: RunningServer,
) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, truncation="disabled", output_modalities=["text"])
        await fill(rec, 6)  # about 3,600 tokens: more than the 2,048 of the window
        done = await reply(rec)
        assert done["status"] == "failed"
        error = done["status_details"]["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "context_length_exceeded"
        assert "truncation is disabled" in error["message"]
        assert (await rec.until("error"))["error"]["code"] == "context_length_exceeded"
        rec.check()


async def test_retention_ratio_keeps_that_share(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, output_modalities=["text"], instructions="Short.")
        await fill(rec, 8)  # about 5,000 tokens (characters / 4) for a 2,048 window
        await reply(rec, timeout_s=60)
        kept_auto = len(scripted_llm.requests[-1]["messages"])
        ratio = {"type": "retention_ratio", "retention_ratio": 0.3}
        await configure(rec, truncation=ratio)
        await reply(rec, timeout_s=60)
        kept_ratio = len(scripted_llm.requests[-1]["messages"])
        assert 1 < kept_ratio < kept_auto, (kept_ratio, kept_auto)
        rec.check()


async def test_beta_temperature_reaches_the_url_engine(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    client = client_for(url_llm_server).with_options(websocket_base_url=url_llm_server.ws_base_url)
    async with client.beta.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn, beta=True)
        await rec.send(
            {"type": "session.update", "session": {"modalities": ["text"], "temperature": 0.65}}
        )
        await rec.until("session.updated")
        await user_text(rec, "Tell me a story.")
        await reply(rec, timeout_s=60)
        assert scripted_llm.requests[-1]["temperature"] == 0.65
        await reply(rec, timeout_s=60, temperature=1.15)
        assert scripted_llm.requests[-1]["temperature"] == 1.15
        rec.check()


async def test_parallel_tool_calls_false_keeps_one_call(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, tools=[WEATHER_TOOL], output_modalities=["text"])
        await user_text(rec, "What is the weather in two cities, Paris and Rome?")
        done = await reply(rec)
        calls = [o for o in done["output"] if o["type"] == "function_call"]
        assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Rome"]
        assert "parallel_tool_calls" not in scripted_llm.requests[-1]
        for call in calls:
            await rec.send({"type": "conversation.item.delete", "item_id": call["id"]})
            await rec.until("conversation.item.deleted")
        done = await reply(rec, parallel_tool_calls=False)
        calls = [o for o in done["output"] if o["type"] == "function_call"]
        assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris"]
        assert scripted_llm.requests[-1]["parallel_tool_calls"] is False
        rec.check()


PIXEL = (  # one transparent pixel, a PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # noqa: E501
)


def image_message(text: str, url: str) -> dict[str, Any]:
    content = [
        {"type": "input_text", "text": text},
        {"type": "input_image", "image_url": url, "detail": "low"},
    ]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


async def test_an_image_reaches_a_url_engine_as_an_image_url_part(
    url_llm_server: RunningServer, scripted_llm: ChatServer
) -> None:
    async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, output_modalities=["text"])
        await rec.send(image_message("What is in this picture?", PIXEL))
        done = await reply(rec)
        assert done["status"] == "completed", done
        user = scripted_llm.requests[-1]["messages"][-1]
        assert user == {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
            ],
        }
        rec.check()


async def test_the_embedded_model_refuses_an_image_saying_why(local_server: RunningServer) -> None:
    async with client_for(local_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await configure(rec, output_modalities=["text"])
        await rec.send(image_message("What is in this picture?", "https://example.com/cat.png"))
        created = await rec.until("conversation.item.done")
        done = await reply(rec)
        assert done["status"] == "failed"
        assert "cannot take images" in done["status_details"]["error"]["message"]
        assert (await rec.until("error"))["error"]["code"] == "invalid_value"
        # Deleting the image's item lets the conversation go on.
        await rec.send({"type": "conversation.item.delete", "item_id": created["item"]["id"]})
        await rec.until("conversation.item.deleted")
        await user_text(rec, "Say hello.")
        assert (await reply(rec))["status"] in ("completed", "incomplete")
        rec.check()


async def test_two_configured_voices_give_different_audio(url_llm_server: RunningServer) -> None:
    """The same scripted words from the default voice (marin: unmapped) and from cedar
    (``--voices cedar=slow-joe.onnx``): the slower voice takes longer to say them."""
    seconds: dict[str, float] = {}
    words: dict[str, str] = {}
    for voice in ("marin", "cedar"):
        async with client_for(url_llm_server).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await configure(rec, audio={"output": {"voice": voice}})
            await user_text(rec, "Tell me a story.")
            await reply(rec, max_output_tokens=8)
            seconds[voice] = len(decode_audio(rec.events)) / 48_000
            words[voice] = "".join(
                e["delta"] for e in rec.of_type("response.output_audio_transcript.delta")
            )
            rec.check()
    assert words["marin"] == words["cedar"] == "Once upon a time, in a quiet valley,"
    assert seconds["cedar"] > 1.3 * seconds["marin"], seconds
