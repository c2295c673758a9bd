"""What a proxied session's client has seen of its session and conversation: what a fallback
(transceiver/proxy/fallback.py) goes on from.

Kept from the upstream's events as the client received them (GA or beta, whichever the
client speaks), and bounded: the newest ``max_items`` conversation items within ``max_bytes``
(their JSON, without audio), and the text of responses in progress within ``max_bytes``
more. Audio is never kept: replayed items carry their text and transcripts only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_SESSION_EVENTS = frozenset(
    {
        "session.created",
        "session.updated",
        "transcription_session.created",
        "transcription_session.updated",
    }
)
_ITEM_EVENTS = frozenset(
    {"conversation.item.added", "conversation.item.done", "conversation.item.created"}
)
# Delta events -> the content index their text belongs to (None: a function call's arguments).
_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.text.delta",
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
        "response.function_call_arguments.delta",
    }
)
# Responses in progress followed at once: beyond this, more are not (a client's out-of-band
# responses may overlap, but not by the hundred).
MAX_OPEN_RESPONSES = 64
_AUDIO_PARTS = frozenset({"audio", "output_audio"})
_PART_TO_BETA = {"output_text": "text", "output_audio": "audio"}
_PART_TO_GA = {"text": "output_text", "audio": "output_audio"}


@dataclass
class _Open:
    """A response in progress, as far as the client has seen it."""

    response: dict[str, Any]
    items: dict[int, dict[str, Any]] = field(default_factory=dict)  # open, by output_index
    parts: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # by item id
    open_parts: set[tuple[str, int, int]] = field(default_factory=set)
    text: dict[tuple[str, int | None], str] = field(default_factory=dict)
    done: list[dict[str, Any]] = field(default_factory=list)


def _strip_audio(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content")
    if not isinstance(content, list):
        return dict(item)
    parts = [
        {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part
        for part in content
    ]
    return {**item, "content": parts}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class History:
    def __init__(self, max_items: int = 500, max_bytes: int = 2 * 1024 * 1024) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self.session: dict[str, Any] | None = None  # the last session object the client saw
        self.conversation_id: str | None = None
        self.items_seen = 0
        self.items_dropped = 0
        self._order: list[str] = []
        self._items: dict[str, dict[str, Any]] = {}
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._open: dict[str, _Open] = {}
        self._open_chars = 0

    # -- the conversation -------------------------------------------------------------

    def items(self) -> list[dict[str, Any]]:
        """The items kept, in conversation order."""
        return [self._items[item_id] for item_id in self._order]

    def _store(self, item: dict[str, Any], previous: Any, placed: bool) -> None:
        """Keep ``item``: in place if known, else after ``previous`` (``placed``: the event
        says where; ``None`` then means the start), else at the end."""
        item_id = item["id"]
        item = _strip_audio(item)
        size = len(json.dumps(item))
        known = item_id in self._items
        if size > self.max_bytes:  # too big to keep at all
            if known:
                self._forget(item_id)
            self.items_dropped += 1
            return
        if known:
            self._bytes -= self._sizes[item_id]
        else:
            self.items_seen += 1
            if placed and previous is None and self._order:
                self._order.insert(0, item_id)
            elif placed and isinstance(previous, str) and previous in self._items:
                self._order.insert(self._order.index(previous) + 1, item_id)
            else:
                self._order.append(item_id)
        self._items[item_id], self._sizes[item_id] = item, size
        self._bytes += size
        while len(self._order) > self.max_items or self._bytes > self.max_bytes:
            self._forget(self._order[0])  # the oldest go first
            self.items_dropped += 1

    def _forget(self, item_id: str) -> None:
        self._order.remove(item_id)
        del self._items[item_id]
        self._bytes -= self._sizes.pop(item_id)

    def _transcribed(self, event: dict[str, Any]) -> None:
        item = self._items.get(str(event.get("item_id")))
        index = _int(event.get("content_index")) or 0
        content = item.get("content") if item is not None else None
        if item is None or not isinstance(content, list) or not 0 <= index < len(content):
            return
        parts = list(content)
        if isinstance(parts[index], dict):
            parts[index] = {**parts[index], "transcript": str(event.get("transcript", ""))}
            self._store({**item, "content": parts}, None, False)

    # -- events -----------------------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        """Follow one event the client received."""
        etype = event.get("type")
        if etype in _TEXT_DELTAS:
            self._delta(event)
        elif etype in _SESSION_EVENTS and isinstance(event.get("session"), dict):
            self.session = event["session"]
        elif etype in _ITEM_EVENTS:
            item = event.get("item")
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                placed = "previous_item_id" in event
                self._store(item, event.get("previous_item_id"), placed)
        elif etype == "conversation.item.deleted":
            if event.get("item_id") in self._items:
                self._forget(str(event["item_id"]))
        elif etype == "conversation.item.input_audio_transcription.completed":
            self._transcribed(event)
        elif etype == "conversation.created":
            conversation = event.get("conversation")
            if isinstance(conversation, dict) and isinstance(conversation.get("id"), str):
                self.conversation_id = conversation["id"]
        elif isinstance(etype, str) and etype.startswith("response."):
            self._response_event(etype, event)

    def _response_event(self, etype: str, event: dict[str, Any]) -> None:
        response = event.get("response")
        if etype == "response.created" and isinstance(response, dict):
            if isinstance(response.get("id"), str) and len(self._open) < MAX_OPEN_RESPONSES:
                self._open[response["id"]] = _Open(response)
            if isinstance(response.get("conversation_id"), str):
                self.conversation_id = response["conversation_id"]
            return
        if etype == "response.done" and isinstance(response, dict):
            self._close(str(response.get("id")))
            return
        state = self._open.get(str(event.get("response_id")))
        index = _int(event.get("output_index"))
        if state is None or index is None:
            return
        item, item_id = event.get("item"), str(event.get("item_id"))
        if etype == "response.output_item.added" and isinstance(item, dict):
            state.items[index] = item
        elif etype == "response.output_item.done" and isinstance(item, dict):
            state.items.pop(index, None)
            state.done.append(item)
            if item.get("id") in self._items:
                self._store(item, None, False)
        elif etype in ("response.content_part.added", "response.content_part.done"):
            part, content_index = event.get("part"), _int(event.get("content_index"))
            if isinstance(part, dict) and content_index is not None:
                state.parts.setdefault(item_id, {})[content_index] = part
                where = (item_id, index, content_index)
                if etype.endswith("added"):
                    state.open_parts.add(where)
                else:
                    state.open_parts.discard(where)

    def _delta(self, event: dict[str, Any]) -> None:
        state = self._open.get(str(event.get("response_id")))
        delta = event.get("delta")
        if state is None or not isinstance(delta, str):
            return
        if self._open_chars + len(delta) > self.max_bytes:
            return  # bounded: what comes past this is not kept
        self._open_chars += len(delta)
        arguments = event.get("type") == "response.function_call_arguments.delta"
        key = (str(event.get("item_id")), None if arguments else _int(event.get("content_index")))
        state.text[key] = state.text.get(key, "") + delta

    def _close(self, response_id: str) -> None:
        state = self._open.pop(response_id, None)
        if state is not None:
            self._open_chars -= sum(len(text) for text in state.text.values())

    # -- a fallback -------------------------------------------------------------------

    def end_open_responses(
        self, event_id: Any, error: dict[str, Any], beta: bool
    ) -> list[dict[str, Any]]:
        """The events that end, for the client, every response the upstream left in
        progress: each open content part and output item is done (``incomplete``, with the
        text so far), then ``response.done`` with status ``failed`` and ``error``.
        ``event_id()`` makes event ids. The items stay in the conversation, as OpenAI
        keeps the output of a failed response."""
        events: list[dict[str, Any]] = []
        for response_id, state in list(self._open.items()):
            for item_id, index, content_index in sorted(state.open_parts, key=lambda p: p[1:]):
                part = self._final_part(state, item_id, content_index)
                events.append(
                    {
                        "type": "response.content_part.done",
                        "event_id": event_id(),
                        "response_id": response_id,
                        "item_id": item_id,
                        "output_index": index,
                        "content_index": content_index,
                        "part": part,
                    }
                )
            for index, item in sorted(state.items.items()):
                final = self._final_item(state, item, beta)
                events.append(
                    {
                        "type": "response.output_item.done",
                        "event_id": event_id(),
                        "response_id": response_id,
                        "output_index": index,
                        "item": final,
                    }
                )
                state.done.append(final)
                if final.get("id") in self._items:
                    self._store(final, None, False)
            details = {"type": "failed", "error": error}
            response = {
                **state.response,
                "status": "failed",
                "status_details": details,
                "output": state.done,
                "usage": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0},
            }
            events.append({"type": "response.done", "event_id": event_id(), "response": response})
            self._close(response_id)
        return events

    def _final_part(self, state: _Open, item_id: str, content_index: int) -> dict[str, Any]:
        part = dict(state.parts.get(item_id, {}).get(content_index) or {})
        text = state.text.get((item_id, content_index), "")
        part["transcript" if part.get("type") in _AUDIO_PARTS else "text"] = text
        state.parts.setdefault(item_id, {})[content_index] = part
        return part

    def _final_item(self, state: _Open, item: dict[str, Any], beta: bool) -> dict[str, Any]:
        item_id = str(item.get("id"))
        final = {**item, "status": "incomplete"}
        if item.get("type") == "function_call":
            final["arguments"] = state.text.get((item_id, None), "")
            return final
        names = _PART_TO_BETA if beta else _PART_TO_GA
        parts = state.parts.get(item_id, {})
        content = []
        for index in sorted(parts):
            part = dict(parts[index])
            part["type"] = names.get(str(part.get("type")), part.get("type"))
            content.append(part)
        final["content"] = content
        return final
