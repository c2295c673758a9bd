"""Checks of PROTOCOL.md section 12 (and LESSONS.md 2) on a recorded event stream."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

_GA_ADAPTER: TypeAdapter[Any] | None = None
_BETA_ADAPTER: TypeAdapter[Any] | None = None

# A delta event -> (its done event, the done event's field that the deltas add up to).
GA_DELTA_DONE = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.output_audio_transcript.delta": (
        "response.output_audio_transcript.done",
        "transcript",
    ),
    "response.function_call_arguments.delta": (
        "response.function_call_arguments.done",
        "arguments",
    ),
}
_TEXT_DELTAS = {
    **GA_DELTA_DONE,
    "response.text.delta": ("response.text.done", "text"),
    "response.audio_transcript.delta": ("response.audio_transcript.done", "transcript"),
}
_DONE_FIELD = {done: (delta, name) for delta, (done, name) in _TEXT_DELTAS.items()}


def validate_with_sdk(event: dict[str, Any], *, beta: bool = False) -> None:
    """Strict validation against the official SDK's server event union."""
    global _GA_ADAPTER, _BETA_ADAPTER
    if beta:
        if event["type"].startswith("transcription_session."):
            return  # not in the beta SDK union (PROTOCOL.md section 5)
        if _BETA_ADAPTER is None:
            from openai.types.beta.realtime import RealtimeServerEvent as Beta

            _BETA_ADAPTER = TypeAdapter(Beta)
        _BETA_ADAPTER.validate_python(event)
    else:
        if _GA_ADAPTER is None:
            from openai.types.realtime import RealtimeServerEvent as GA

            _GA_ADAPTER = TypeAdapter(GA)
        _GA_ADAPTER.validate_python(event)


def check_stream(events: list[dict[str, Any]], *, beta: bool = False, sdk: bool = True) -> None:
    assert events, "no events"
    assert events[0]["type"] in ("session.created", "transcription_session.created"), events[0]
    active: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    default_active: str | None = None
    speech: dict[str, str] = {}
    for event in events:
        etype = event["type"]
        assert isinstance(event.get("event_id"), str) and event["event_id"].startswith("event_"), (
            event
        )
        if sdk:
            validate_with_sdk(event, beta=beta)
        if etype.startswith("output_audio_buffer."):
            continue  # playback events: they may outlast response.done (WebRTC)
        rid = event.get("response_id") or (
            event["response"]["id"] if isinstance(event.get("response"), dict) else None
        )
        if etype == "response.created":
            assert rid not in active and rid not in finished, f"response {rid} created twice"
            active[rid] = {
                "items": {},
                "parts": set(),
                "text": {},
                "done_items": [],
                "next_index": 0,
            }
            if event["response"]["conversation_id"] is not None:
                assert default_active is None, "two default-conversation responses at once"
                default_active = rid
            continue
        if rid is None:
            if etype == "input_audio_buffer.speech_started":
                speech["started"] = event["item_id"]
            elif etype == "input_audio_buffer.speech_stopped":
                assert speech.get("started") == event["item_id"]
                speech["stopped"] = event["item_id"]
            elif etype == "input_audio_buffer.committed" and "stopped" in speech:
                assert speech.pop("stopped") == event["item_id"]
                speech.pop("started", None)
            continue
        assert rid not in finished, f"{etype} after response.done of {rid}"
        assert rid in active, f"{etype} before response.created of {rid}"
        state = active[rid]
        if etype == "response.output_item.added":
            assert event["output_index"] == state["next_index"], "output_index must count up"
            state["next_index"] += 1
            state["items"][event["output_index"]] = event["item"]["id"]
        elif etype == "response.output_item.done":
            assert state["items"].pop(event["output_index"]) == event["item"]["id"]
            state["done_items"].append(event["item"])
        elif etype == "response.content_part.added":
            state["parts"].add((event["item_id"], event["output_index"], event["content_index"]))
        elif etype == "response.content_part.done":
            state["parts"].remove((event["item_id"], event["output_index"], event["content_index"]))
        elif etype in _TEXT_DELTAS:
            key = (etype, event["item_id"])
            state["text"][key] = state["text"].get(key, "") + event["delta"]
        elif etype in _DONE_FIELD:
            delta_type, field = _DONE_FIELD[etype]
            assert state["text"].pop((delta_type, event["item_id"]), "") == event[field], (
                f"{etype}: deltas do not add up to the done value"
            )
        elif etype == "response.done":
            assert not state["items"], f"output items without .done: {state['items']}"
            assert not state["parts"], f"content parts without .done: {state['parts']}"
            output = event["response"]["output"]
            assert output == state["done_items"], "response.done output != output_item.done items"
            for item in output:
                for part in item.get("content", []):
                    assert "audio" not in part, "response.done must not carry audio bytes"
            assert event["response"]["status"] != "in_progress"
            del active[rid]
            finished.add(rid)
            if default_active == rid:
                default_active = None
    assert not active, f"responses without response.done: {list(active)}"
