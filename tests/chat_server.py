"""A scripted OpenAI-compatible chat-completions server on loopback, for the URL LLM engine.

Only the LLM on the other side is scripted; the relay's own code is real. It records
every request body, and streams SSE:
- a tool call (in fragments) when tools are offered and the user asks about weather,
- a fixed answer after a tool result,
- otherwise a long story, word by word (a word a token: ``max_tokens`` cuts it, with
  ``finish_reason: "length"``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STORY = (
    "Once upon a time, in a quiet valley, there lived a patient dragon who loved to count "
    "the stars. Every night he climbed the tallest hill, and every night he lost count "
    "somewhere past a thousand. The villagers brought him lanterns, and maps, and songs, "
    "but nothing helped him finish. One winter a small girl sat beside him and began to "
    "count the dark spaces instead, and together they laughed until the sun came up."
)
TOOL_ANSWER = "It is sunny in Paris today."


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self.server.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        messages = body["messages"]
        last = messages[-1]
        try:
            if last["role"] == "tool":
                self._words(TOOL_ANSWER)
            elif body.get("tools") and "two cities" in str(last.get("content", "")).lower():
                # Two calls in one reply, whatever parallel_tool_calls says (as a model that
                # ignores it would): the backend must keep the first when it is false.
                self._tool_call(0, "Paris")
                self._tool_call(1, "Rome")
                self.wfile.write(_chunk({}, "tool_calls"))
            elif body.get("tools") and "weather" in str(last.get("content", "")).lower():
                self._tool_call(0, "Paris")
                self.wfile.write(_chunk({}, "tool_calls"))
            else:
                self._words(STORY, body.get("max_tokens"))
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # the relay stopped reading (barge-in)

    def _words(self, text: str, max_tokens: int | None = None) -> None:
        """``text`` word by word, a word a token: cut at ``max_tokens`` (finish "length")."""
        words = text.split(" ")
        for index, word in enumerate(words[:max_tokens]):
            self.wfile.write(_chunk({"content": word if index == 0 else " " + word}))
            self.wfile.flush()
            time.sleep(0.005)
        cut = max_tokens is not None and max_tokens < len(words)
        self.wfile.write(_chunk({}, "length" if cut else "stop"))

    def _tool_call(self, index: int, city: str) -> None:
        fragments = ['{"ci', f'ty": "{city[:2]}', f'{city[2:]}"}}']
        self.wfile.write(
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_scripted000{index + 1}",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
        )
        for fragment in fragments:
            self.wfile.write(
                _chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            )


@contextmanager
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
