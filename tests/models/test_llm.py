from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from models.errors import LlmError
from models.llm import (
    LlamaCppLlm,
    Llm,
    LlmChunk,
    OpenAICompatLlm,
    TextDelta,
    ToolCall,
    ToolCallStreamParser,
    bundled_gguf_path,
    iter_sse_chunks,
    parse_tool_call,
    to_chat_tool,
    to_embedded_messages,
    trim_history,
)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
NAMES = {"get_weather"}
USER_Q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def _text(chunks: list[LlmChunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


# ---------------------------------------------------------------- embedded model


GREETING = [{"role": "user", "content": "Hello, my name is Ann."}]


def test_forced_tool_call_under_a_grammar(llama_llm: LlamaCppLlm) -> None:
    """A greeting has nothing to do with the weather: left to itself the model answers in
    text; with the tool forced (tool_choice), the grammar makes every reply the call."""
    free = list(llama_llm.stream(GREETING, tools=[WEATHER_TOOL], max_tokens=40, temperature=0.0))
    assert not any(isinstance(c, ToolCall) for c in free)
    finish: list[str] = []
    for choice in ({"type": "function", "name": "get_weather"}, "required"):
        chunks = list(
            llama_llm.stream(
                GREETING,
                tools=[WEATHER_TOOL],
                max_tokens=60,
                tool_choice=choice,
                on_finish=finish.append,
            )
        )
        assert len(chunks) == 1 and isinstance(chunks[0], ToolCall), chunks
        assert chunks[0].name == "get_weather"
        assert isinstance(json.loads(chunks[0].arguments), dict)
    assert finish == ["stop", "stop"]


def test_embedded_finish_reason_length(llama_llm: LlamaCppLlm) -> None:
    finish: list[str] = []
    list(llama_llm.stream(USER_Q, max_tokens=2, temperature=0.0, on_finish=finish.append))
    assert finish == ["length"]


def test_bundled_gguf_path() -> None:
    assert bundled_gguf_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_llama_streams_text(llama_llm: LlamaCppLlm) -> None:
    chunks = list(llama_llm.stream(USER_Q, max_tokens=16, temperature=0.0))
    assert chunks and all(isinstance(c, TextDelta) for c in chunks)
    assert _text(chunks).strip()


def test_llama_early_close_releases_model(llama_llm: LlamaCppLlm) -> None:
    stream = llama_llm.stream(USER_Q, max_tokens=64)
    assert isinstance(next(stream), TextDelta)
    stream.close()  # barge-in
    again = list(llama_llm.stream(USER_Q, max_tokens=4, temperature=0.0))
    assert again


def test_llama_concurrent_streams_are_serialised(llama_llm: LlamaCppLlm) -> None:
    def run(_: int) -> str:
        return _text(list(llama_llm.stream(USER_Q, max_tokens=8, temperature=0.0)))

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(run, range(2))
    assert a.strip() and b.strip()


def test_llama_accepts_tools_and_tool_history(llama_llm: LlamaCppLlm) -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'},
    ]
    chunks = list(llama_llm.stream(history, tools=[WEATHER_TOOL], max_tokens=16))
    assert all(isinstance(c, (TextDelta, ToolCall)) for c in chunks)


def test_llama_count_tokens(llama_llm: LlamaCppLlm) -> None:
    short = llama_llm.count_tokens([{"role": "user", "content": "hi"}])
    long = llama_llm.count_tokens([{"role": "user", "content": "hi " * 50}])
    assert 0 < short < long <= llama_llm.context_tokens
    assert llama_llm.context_tokens == 1024


class _FakeLlama:
    """Stands in for llama_cpp.Llama: replays scripted content deltas."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.kwargs: dict[str, Any] = {}

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.kwargs = kwargs
        return ({"choices": [{"delta": {"content": p}}]} for p in self.pieces)


def _fake_llm(pieces: list[str]) -> tuple[LlamaCppLlm, _FakeLlama]:
    fake = _FakeLlama(pieces)
    llm = LlamaCppLlm.__new__(LlamaCppLlm)
    llm._llama = fake  # type: ignore[assignment]
    llm._lock = threading.Lock()
    llm.context_tokens = 2048
    return llm, fake


def test_embedded_tool_call_is_parsed_from_stream() -> None:
    pieces = ["<tool", '_call>{"name": "get_weather", ', '"arguments": {"city"', ': "Oslo"}}']
    llm, fake = _fake_llm(pieces)
    chunks = list(llm.stream(USER_Q, tools=[WEATHER_TOOL]))
    assert chunks == [ToolCall("get_weather", '{"city": "Oslo"}')]
    assert fake.kwargs["stop"] == ["</tool_call>"]
    system = fake.kwargs["messages"][0]
    assert system["role"] == "system" and '"name": "get_weather"' in system["content"]


def test_embedded_text_streams_with_tools_present() -> None:
    llm, _ = _fake_llm(["It", " is", " sunny."])
    assert list(llm.stream(USER_Q, tools=[WEATHER_TOOL])) == [
        TextDelta("It"),
        TextDelta(" is"),
        TextDelta(" sunny."),
    ]


# ---------------------------------------------------------------- embedded format (pure)


def test_parse_valid_tool_call() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert parse_tool_call(text, NAMES) == ToolCall("get_weather", '{"city": "Paris"}')
    # closing tag optional (it is the stop sequence); string arguments accepted
    text2 = '<tool_call> {"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}'
    assert parse_tool_call(text2, NAMES) == ToolCall("get_weather", '{"city": "Rome"}')


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # bad JSON
        '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>',  # unknown tool
        '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>',  # not an object
        "<tool_call>no json here</tool_call>",
        'Sure! {"name": "get_weather", "arguments": {}}',  # no tag
    ],
)
def test_parse_invalid_tool_call_is_none(text: str) -> None:
    assert parse_tool_call(text, NAMES) is None


def _feed_all(pieces: list[str]) -> list[LlmChunk]:
    parser = ToolCallStreamParser(NAMES)
    out: list[LlmChunk] = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    return out + parser.finish()


def test_stream_parser_valid_call() -> None:
    pieces = ["  <", "tool_call>", '{"name": "get_weather",', ' "arguments": {}}', "</tool_call>"]
    assert _feed_all(pieces) == [ToolCall("get_weather", "{}")]


def test_stream_parser_invalid_json_falls_back_to_text() -> None:
    pieces = ["<tool_call>", '{"name": "get_weather", "arguments": {oops}}']
    assert _feed_all(pieces) == [TextDelta("".join(pieces))]


def test_stream_parser_unknown_tool_falls_back_to_text() -> None:
    pieces = ["<tool_call>", '{"name": "nope", "arguments": {}}']
    assert _feed_all(pieces) == [TextDelta("".join(pieces))]


def test_stream_parser_plain_text_is_not_delayed() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed("<to") == []  # could still become a tool call
    assert parser.feed("day is") == [TextDelta("<today is")]
    assert parser.feed(" fine") == [TextDelta(" fine")]
    assert parser.finish() == []


def test_to_embedded_messages_renders_tool_turns() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "21C"},
    ]
    out = to_embedded_messages(history, [WEATHER_TOOL])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert "<tools>" in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    assert out[3]["content"] == "<tool_response>\n21C\n</tool_response>"


def test_to_chat_tool() -> None:
    assert to_chat_tool(WEATHER_TOOL) == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": WEATHER_TOOL["parameters"],
        },
    }
    nested = {"type": "function", "function": {"name": "x"}}
    assert to_chat_tool(nested) is nested


# ---------------------------------------------------------------- trim_history (pure)


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content") or "") + 10 for m in messages)


def test_trim_history_noop_when_it_fits() -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert trim_history(msgs, max_tokens=1000, count=_chars) == msgs


def test_trim_history_drops_oldest_keeps_system() -> None:
    msgs = [
        {"role": "system", "content": "S" * 10},
        {"role": "user", "content": "a" * 50},
        {"role": "assistant", "content": "b" * 50},
        {"role": "user", "content": "c" * 50},
        {"role": "assistant", "content": "d" * 50},
        {"role": "user", "content": "e" * 50},
    ]
    out = trim_history(msgs, max_tokens=150, count=_chars)
    assert out == [msgs[0], msgs[4], msgs[5]]
    # the newest message survives even if nothing fits
    assert trim_history(msgs, max_tokens=1, count=_chars) == [msgs[0], msgs[5]]


def test_trim_history_never_orphans_tool_results() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}, {"id": "c2"}]}
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "x" * 40},
        call,
        {"role": "tool", "tool_call_id": "c1", "content": "r" * 40},
        {"role": "tool", "tool_call_id": "c2", "content": "r" * 40},
        {"role": "assistant", "content": "y" * 40},
        {"role": "user", "content": "z" * 40},
    ]
    for budget in range(0, 400, 5):
        out = trim_history(msgs, max_tokens=budget, count=_chars)
        assert out[0] == msgs[0] and out[-1] == msgs[-1]
        turns = [m for m in out if m["role"] != "system"]
        assert turns[0]["role"] != "tool"
        if any(m["role"] == "tool" for m in out):
            assert call in out


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = 200
        self.events: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # e.g. BrokenPipeError once a client closed its stream early


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(json.loads(body))
        self.server.headers_seen.append(dict(self.headers))
        if self.server.status != 200:
            self.send_response(self.server.status)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "model exploded"}}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in self.server.events:
            data = event if isinstance(event, str) else json.dumps(event)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture()
def client(server: _Server) -> Iterator[OpenAICompatLlm]:
    host, port = server.server_address[:2]
    llm = OpenAICompatLlm(f"http://{host!s}:{port}/v1", "test-model", api_key="sk-secret")
    yield llm
    llm.close()


def test_engines_satisfy_protocol(llama_llm: LlamaCppLlm, client: OpenAICompatLlm) -> None:
    engines: list[Llm] = [llama_llm, client]  # checked by mypy
    for engine in engines:
        assert engine.context_tokens > 0
        assert engine.count_tokens(USER_Q) > 0


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_openai_compat_streams_text(server: _Server, client: OpenAICompatLlm) -> None:
    server.events = [
        _delta(role="assistant"),
        _delta(content="Hel"),
        _delta(content="lo!"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    chunks = list(client.stream(USER_Q, tools=[WEATHER_TOOL], max_tokens=5, temperature=0.1))
    assert chunks == [TextDelta("Hel"), TextDelta("lo!")]
    sent = server.requests[0]
    assert sent["model"] == "test-model" and sent["stream"] is True
    assert sent["max_tokens"] == 5 and sent["messages"] == USER_Q
    assert sent["tools"] == [to_chat_tool(WEATHER_TOOL)]
    assert server.headers_seen[0]["Authorization"] == "Bearer sk-secret"


def test_openai_compat_streams_tool_call_fragments(
    server: _Server, client: OpenAICompatLlm
) -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    server.events = [
        _delta(role="assistant", content=None, tool_calls=[first]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": '{"ci'}}]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Pa'}}]),
        _delta(tool_calls=[{"index": 0, "function": {"arguments": 'ris"}'}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    chunks = list(client.stream(USER_Q, tools=[WEATHER_TOOL]))
    assert chunks == [ToolCall("get_weather", '{"city": "Paris"}', "call_1")]


def test_openai_compat_http_error(server: _Server, client: OpenAICompatLlm) -> None:
    server.status = 500
    with pytest.raises(LlmError, match="HTTP 500") as info:
        list(client.stream(USER_Q))
    assert "sk-secret" not in str(info.value)


def test_openai_compat_connection_error() -> None:
    with socket.socket() as sock:  # bind then release: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAICompatLlm(f"http://127.0.0.1:{port}/v1", "m", api_key="sk-secret", timeout_s=2)
    try:
        with pytest.raises(LlmError, match="failed") as info:
            list(llm.stream(USER_Q))
        assert "sk-secret" not in str(info.value)
    finally:
        llm.close()


def test_openai_compat_early_close(server: _Server, client: OpenAICompatLlm) -> None:
    server.events = [_delta(content=str(i)) for i in range(50)]
    stream = client.stream(USER_Q)
    assert next(stream) == TextDelta("0")
    stream.close()


def test_sse_parser_errors_and_multiple_calls() -> None:
    with pytest.raises(LlmError, match="malformed"):
        list(iter_sse_chunks(["data: {not json"]))
    with pytest.raises(LlmError, match="rate limited"):
        list(iter_sse_chunks(['data: {"error": {"message": "rate limited"}}']))
    lines = [
        ": keep-alive",
        "",
        "data: "
        + json.dumps(
            _delta(
                tool_calls=[
                    {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
                    {"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}},
                ]
            )
        ),
    ]
    assert list(iter_sse_chunks(lines)) == [ToolCall("f", "{}", "a"), ToolCall("g", "{}", "b")]
