"""A Realtime conversation as chat-completions messages (the LLM's history)."""

from __future__ import annotations

from typing import Any

from transceiver.protocol.effects import ResponseRequest
from transceiver.protocol.items import item_text


def chat_messages(request: ResponseRequest) -> list[dict[str, Any]]:
    """Instructions, user and assistant messages, function calls and their outputs.

    Assistant audio appears as its transcript, which a truncation has already cut
    to what the user heard.
    """
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for ctx in request.context:
        item = ctx.item
        kind = item.get("type")
        if kind == "message":
            text = item_text(item)
            if text:
                messages.append({"role": item.get("role", "user"), "content": text})
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
