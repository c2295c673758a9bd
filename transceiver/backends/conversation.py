"""A Realtime conversation as chat-completions messages (the LLM's history), and how it
is fitted into the LLM's context window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.llm import trim_history
from transceiver.backends.base import BackendError
from transceiver.protocol.effects import ResponseRequest
from transceiver.protocol.items import item_text


def chat_messages(request: ResponseRequest, images: bool = False) -> list[dict[str, Any]]:
    """Instructions, user and assistant messages, function calls and their outputs.

    Assistant audio appears as its transcript, which a truncation has already cut
    to what the user heard. A user message's ``input_image`` parts become chat-completions
    ``image_url`` parts when the LLM takes ``images``; else the response is refused
    (``ResponseRefused``), never answered as if the image were not there.
    """
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for ctx in request.context:
        item = ctx.item
        kind = item.get("type")
        if kind == "message":
            message = _message(item, images)
            if message is not None:
                messages.append(message)
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
            }
            previous = messages[-1] if messages else None
            if previous is not None and previous.get("tool_calls") and previous["content"] is None:
                previous["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": str(item.get("output", "")),
                }
            )
    return messages


def _message(item: dict[str, Any], images: bool) -> dict[str, Any] | None:
    role, text = item.get("role", "user"), item_text(item)
    pictures = [p for p in item.get("content", []) if p.get("type") == "input_image"]
    if not pictures:
        return {"role": role, "content": text} if text else None
    if not images:
        raise ResponseRefused(
            "The conversation holds an image, and this server's embedded model cannot take "
            "images: give the local backend a vision model with --llm-url, or delete the "
            "image's item.",
            code="invalid_value",
        )
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for picture in pictures:
        url = {"url": picture["image_url"], "detail": picture.get("detail") or "auto"}
        parts.append({"type": "image_url", "image_url": url})
    return {"role": role, "content": parts}


class ResponseRefused(BackendError):
    """A response the backend will not generate, for a reason the client is told (its
    ``response.done`` fails with this error, and an ``error`` event says it)."""

    def __init__(self, message: str, code: str, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.error_type = error_type


def fit_context(
    messages: list[dict[str, Any]],
    truncation: str | dict[str, Any],
    window_tokens: int,
    count: Callable[[list[dict[str, Any]]], int],
) -> list[dict[str, Any]]:
    """The chat history as it fits ``window_tokens``, by the session's ``truncation``.

    ``auto``: the oldest turns are dropped until it fits. ``disabled``: "the server will
    never truncate but would instead return an error if the conversation exceeds the
    model's input token limit" (RealtimeTruncation, OpenAI API reference). A
    ``retention_ratio``: past the limit (the window, or ``token_limits.post_instructions``
    after the instructions), turns are dropped until that fraction of the post-instruction
    limit is used, so the next turns do not truncate again at once.
    """
    total = count(messages)
    if truncation == "disabled":
        if total > window_tokens:
            raise ResponseRefused(
                f"The conversation ({total} tokens) does not fit the model's context window "
                f"({window_tokens} tokens for the input), and truncation is disabled. Delete "
                "items, or set truncation to 'auto'.",
                code="context_length_exceeded",
            )
        return messages
    if not isinstance(truncation, dict):
        return trim_history(messages, max_tokens=window_tokens, count=count)
    instructions = count([m for m in messages if m.get("role") == "system"])
    limits = truncation.get("token_limits") or {}
    post = limits.get("post_instructions")
    limit = window_tokens if post is None else min(window_tokens, instructions + int(post))
    if total <= limit:
        return messages
    ratio = float(truncation.get("retention_ratio", 1.0))
    target = instructions + int((limit - instructions) * ratio)
    return trim_history(messages, max_tokens=target, count=count)


def offered_tools(request: ResponseRequest) -> list[dict[str, Any]]:
    """The function tools the LLM is offered (none for ``tool_choice: none``); a choice
    this backend cannot honour is refused (``ResponseRefused``)."""
    choice = request.tool_choice
    tools = [t for t in request.tools if t.get("type") == "function"]
    if any(t.get("type") == "mcp" for t in request.tools):
        raise ResponseRefused(
            "MCP tools are not supported: this server's local and mock backends do not run "
            "MCP servers (the openai backend passes them to OpenAI). Remove them from "
            "'tools' to get a response.",
            code="invalid_value",
        )
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        raise ResponseRefused(
            "tool_choice 'mcp' is not supported: this server's local and mock backends do "
            "not run MCP tools.",
            code="invalid_value",
        )
    if choice == "required" and not tools:
        raise ResponseRefused(
            "tool_choice 'required' needs a function tool, and the response offers none.",
            code="invalid_value",
        )
    return [] if choice == "none" else tools
