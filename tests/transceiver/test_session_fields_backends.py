"""The backends' side of tool_choice, truncation and max_output_tokens (issue 15, part A):
fitting the history into the context window, the tools offered, the mock's tool choice,
and the LLM adapters' finish reasons and forced calls."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from models.llm import (
    forced_tool,
    iter_sse_chunks,
    to_chat_tool_choice,
)
from models.tool_grammar import call_schema, parse_call
from tests.transceiver.requests import request as base_request
from transceiver.backends.conversation import ResponseRefused, fit_context, offered_tools
from transceiver.backends.mock import MockBackend, MockOptions, MockScript, ScriptTurn

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
TIME = {"type": "function", "name": "get_time"}


def make_request(user: dict[str, Any] | None = None, **fields: Any) -> Any:
    return dataclasses.replace(base_request(*([user] if user else [])), **fields)


def count(messages: list[dict[str, Any]]) -> int:
    """A token a character: easy sums."""
    return sum(len(str(m.get("content") or "")) for m in messages)


def history(turns: int) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": "x" * 10}]
    for index in range(turns):
        role = "user" if index % 2 == 0 else "assistant"
        messages.append({"role": role, "content": str(index % 10) * 100})
    return messages


def test_auto_drops_the_oldest_turns_until_it_fits() -> None:
    fitted = fit_context(history(10), "auto", 510, count)
    assert count(fitted) <= 510 and len(fitted) == 6  # the system message and 5 turns
    assert fitted[0]["role"] == "system" and fitted[-1]["content"] == "9" * 100


def test_disabled_fails_instead_of_dropping() -> None:
    assert fit_context(history(3), "disabled", 510, count) == history(3)
    with pytest.raises(ResponseRefused) as refused:
        fit_context(history(10), "disabled", 510, count)
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.error_type == "invalid_request_error"


def test_retention_ratio_keeps_that_share_of_the_limit() -> None:
    ratio = {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": None}
    assert fit_context(history(4), ratio, 510, count) == history(4)  # it fits: unchanged
    fitted = fit_context(history(10), ratio, 510, count)
    # 10 of instructions, then at most half of the 500 after them.
    assert count(fitted) <= 10 + 250 and len(fitted) == 3


def test_retention_ratio_post_instructions_limit() -> None:
    ratio = {
        "type": "retention_ratio",
        "retention_ratio": 1.0,
        "token_limits": {"post_instructions": 300},
    }
    fitted = fit_context(history(6), ratio, 5000, count)
    assert count(fitted) <= 310 and len(fitted) == 4


def test_offered_tools_follow_the_tool_choice() -> None:
    both = (WEATHER, TIME)
    assert offered_tools(make_request(tools=both, tool_choice="auto")) == list(both)
    assert offered_tools(make_request(tools=both, tool_choice="none")) == []
    mcp = {"type": "mcp", "server_label": "wiki"}
    with pytest.raises(ResponseRefused, match="MCP"):
        offered_tools(
            make_request(tools=(mcp,), tool_choice={"type": "mcp", "server_label": "wiki"})
        )
    with pytest.raises(ResponseRefused, match="MCP tools are not supported"):
        offered_tools(make_request(tools=(WEATHER, mcp), tool_choice="auto"))
    with pytest.raises(ResponseRefused, match="required"):
        offered_tools(make_request(tools=(), tool_choice="required"))


class Sink:
    output_format = "audio/pcm"

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls: list[tuple[str, str]] = []

    async def text(self, delta: str) -> None:
        self.texts.append(delta)

    async def transcript(self, delta: str) -> None:
        self.texts.append(delta)

    async def audio(self, pcm16: bytes, sample_rate_hz: int = 24000) -> None:
        return None

    async def function_call(self, name: str, arguments: str, call_id: str | None = None) -> None:
        self.calls.append((name, arguments))

    def mark(self, stage: str) -> None:
        return None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("choice", "calls", "spoken"),
    [
        ("auto", [], "hello there"),
        ("none", [], "hello there"),
        ({"type": "function", "name": "get_time"}, [("get_time", "{}")], ""),
        ("required", [("get_weather", "{}")], ""),
    ],
)
async def test_the_mock_follows_the_tool_choice(choice: Any, calls: Any, spoken: str) -> None:
    mock = MockBackend(MockOptions(first_delta_ms=0, realtime=False))
    user = {
        "id": "item_1",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hello there"}],
    }
    request = make_request(
        tools=(WEATHER, TIME), tool_choice=choice, output_modalities=("text",), user=user
    )
    sink = Sink()
    assert await mock.respond(request, sink, {}) is None
    assert sink.calls == calls and "".join(sink.texts) == spoken


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("tools", "calls"),
    [
        ((WEATHER, TIME), [("get_weather", '{"city": "Paris"}')]),
        ((TIME,), []),  # not offered: a model could not call it
        ((), []),
    ],
)
async def test_the_mocks_scripted_call_needs_its_function_offered(tools: Any, calls: Any) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    script = MockScript(turns=[ScriptTurn(re.compile("weather", re.I), "Let me check.", call)])
    mock = MockBackend(MockOptions(script=script, first_delta_ms=0, realtime=False))
    user = {
        "id": "item_1",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "the weather?"}],
    }
    request = make_request(tools=tools, tool_choice="auto", output_modalities=("text",), user=user)
    sink = Sink()
    await mock.respond(request, sink, {})
    assert sink.calls == calls and "".join(sink.texts) == "Let me check."


def test_tool_choice_for_chat_completions() -> None:
    assert to_chat_tool_choice("required") == "required"
    assert to_chat_tool_choice({"type": "function", "name": "f"}) == {
        "type": "function",
        "function": {"name": "f"},
    }
    assert forced_tool([WEATHER, TIME], "required") == ["get_weather", "get_time"]
    assert forced_tool([WEATHER], {"type": "function", "name": "get_weather"}) == ["get_weather"]
    assert forced_tool([WEATHER], "auto") is None and forced_tool([], "required") is None


def test_finish_reason_of_a_chat_completions_stream() -> None:
    finish: list[str] = []
    chunk = {"choices": [{"delta": {"content": "Once"}, "finish_reason": None}]}
    end = {"choices": [{"delta": {}, "finish_reason": "length"}]}
    lines = [f"data: {json.dumps(chunk)}", f"data: {json.dumps(end)}", "data: [DONE]"]
    assert [getattr(c, "text", None) for c in iter_sse_chunks(lines, finish.append)] == ["Once"]
    assert finish == ["length"]


def test_forced_call_schema_and_parse() -> None:
    schema = call_schema([WEATHER, TIME], ["get_weather", "get_time"])
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == [
        "get_weather",
        "get_time",
    ]
    one = call_schema([TIME], ["get_time"])
    assert one["properties"]["arguments"] == {"type": "object"}
    text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert parse_call(text, ["get_weather"]) == ("get_weather", '{"city": "Oslo"}')
    assert parse_call('{"name": "get_weather", "argu', ["get_weather"]) is None
    assert parse_call(text, ["get_time"]) is None
