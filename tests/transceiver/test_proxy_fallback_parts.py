"""The fallback's pure parts: what the proxy keeps of a session (transceiver/proxy/history.py)
and how a fallback's core starts from it (transceiver/proxy/fallback.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.invariants import check_stream, validate_with_sdk
from transceiver.protocol import IdFactory, RealtimeSession
from transceiver.protocol.config import RealtimeSessionConfig
from transceiver.protocol.contract import Dialect, SessionSpec
from transceiver.proxy.fallback import notice, replayed_items, resumed_config, resumed_core
from transceiver.proxy.history import History


def item(item_id: str, text: str = "hi", role: str = "user") -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{"type": kind, "text": text}],
    }


def added(new: dict[str, Any], previous: str | None) -> dict[str, Any]:
    return {"type": "conversation.item.added", "previous_item_id": previous, "item": new}


def ids(history: History) -> list[str]:
    return [kept["id"] for kept in history.items()]


def test_items_keep_the_conversation_order() -> None:
    history = History()
    for event in (
        added(item("a"), None),
        added(item("b"), "a"),
        added(item("c"), "a"),  # inserted after a
        added(item("d"), None),  # at the start
        {"type": "conversation.item.deleted", "item_id": "b"},
        {"type": "conversation.item.done", "previous_item_id": "a", "item": item("c", "new")},
    ):
        history.observe(event)
    assert ids(history) == ["d", "a", "c"]
    assert history.items()[-1]["content"][0]["text"] == "new"  # updated in place


def test_audio_is_not_kept_but_transcripts_are() -> None:
    history = History()
    audio_part = {"type": "input_audio", "audio": "AAAA" * 1000, "transcript": None}
    history.observe(added({**item("a"), "content": [audio_part]}, None))
    history.observe(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "a",
            "content_index": 0,
            "transcript": "hello there",
        }
    )
    assert history.items()[0]["content"] == [{"type": "input_audio", "transcript": "hello there"}]


def test_the_history_is_bounded() -> None:
    history = History(max_items=3, max_bytes=2000)
    previous = None
    for n in range(10):
        history.observe(added(item(f"i{n}"), previous))
        previous = f"i{n}"
    assert ids(history) == ["i7", "i8", "i9"]  # the newest
    history.observe(added(item("big", "x" * 5000), "i9"))  # bigger than the bound: not kept
    assert ids(history) == ["i7", "i8", "i9"]
    history.observe(added(item("mid", "x" * 1700), "i9"))  # the oldest make room
    assert ids(history) == ["i9", "mid"] and history.items_dropped == 10
    # The text of responses in progress is bounded too.
    history.observe({"type": "response.created", "response": {"id": "r1"}})
    for _ in range(100):
        delta = {"type": "response.output_text.delta", "response_id": "r1", "delta": "y" * 100}
        history.observe({**delta, "item_id": "x", "output_index": 0, "content_index": 0})
    assert history._open_chars <= 2000


def core_stream(beta: bool) -> tuple[RealtimeSession, list[dict[str, Any]]]:
    """A real session's stream, cut while a response speaks (its items and part open)."""
    spec = SessionSpec(model="gpt-realtime", dialect=Dialect.BETA if beta else Dialect.GA)
    session = RealtimeSession(spec, ids=IdFactory(random.Random(3)))
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    session.receive_client_event({"type": "conversation.item.create", "item": user}, 0)
    session.receive_client_event({"type": "session.update", "session": {"instructions": "X"}}, 0)
    session.receive_client_event({"type": "response.create"}, 0)
    (start,) = session.effects()
    rid = start.request.response_id  # type: ignore[attr-defined]
    session.response_function_call(rid, "lookup", '{"q": 1}')
    session.response_transcript_delta(rid, "Hello ")
    session.response_audio_delta(rid, b"\x00\x00" * 100)
    session.response_transcript_delta(rid, "there")
    return session, session.events_to_send()


@pytest.mark.parametrize("beta", [False, True])
def test_responses_left_in_progress_end_well_formed(beta: bool) -> None:
    _, stream = core_stream(beta)
    history = History()
    for event in stream:
        history.observe(event)
    counter = iter(range(1000))
    error = {"type": "server_error", "code": "upstream_unavailable", "message": "gone"}
    ends = history.end_open_responses(lambda: f"event_end{next(counter)}", error, beta)
    assert [e["type"] for e in ends] == [
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    for event in ends:
        validate_with_sdk(event, beta)
    check_stream(stream + ends, beta=beta)  # every response.created has its response.done
    done = ends[-1]["response"]
    assert done["status"] == "failed" and done["status_details"]["error"] == error
    call, message = done["output"]
    assert call["arguments"] == '{"q": 1}' and call["status"] == "completed"
    assert message["status"] == "incomplete"
    assert message["content"][0]["transcript"] == "Hello there"
    # The conversation keeps the item as it ended, for the fallback's context.
    kept = {k["id"]: k for k in history.items()}[message["id"]]
    assert kept["content"][0]["transcript"] == "Hello there"
    assert history.end_open_responses(lambda: "event_x", error, beta) == []  # ended once


@pytest.mark.parametrize("beta", [False, True])
def test_a_fallback_core_resumes_what_the_client_saw(beta: bool) -> None:
    session, stream = core_stream(beta)
    history = History()
    for event in stream:
        history.observe(event)
    history.end_open_responses(lambda: "event_e", {"type": "server_error"}, beta)
    spec = SessionSpec(model="gpt-realtime", dialect=Dialect.BETA if beta else Dialect.GA)
    core, dropped = resumed_core(spec, history, 60_000)
    assert dropped == [] and core.events_to_send() == []
    assert core.id == session.id and core.conversation.id == session.conversation.id
    assert core.config == session.config  # the instructions the client set, and the rest
    assert [s.item["id"] for s in core.conversation.items()] == [
        s.item["id"] for s in session.conversation.items()
    ]
    answer = core.conversation.items()[-1].item
    assert answer["content"][0] == {"type": "output_audio", "transcript": "Hello there"}


def test_fields_the_core_does_not_take_are_left_out() -> None:
    spec = SessionSpec(model="gpt-realtime")
    session = {
        "object": "realtime.session",
        "id": "sess_1",
        "model": "gpt-realtime-2",
        "instructions": "Be kind.",
        "brand_new_field": {"x": 1},
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        "audio": {
            "input": {"turn_detection": {"type": "server_vad", "new_knob": 3}},
            "output": {"format": {"type": "audio/flac"}, "voice": "verse"},  # a new format
        },
    }
    config, dropped = resumed_config(spec, session)
    assert isinstance(config, RealtimeSessionConfig)
    assert config.instructions == "Be kind." and config.model == "gpt-realtime-2"
    assert [tool.model_dump()["name"] for tool in config.tools] == ["f"]  # the one it takes
    assert sorted(dropped) == [
        "session.audio.input.turn_detection.new_knob",
        "session.audio.output.format.type",
        "session.brand_new_field",
        "session.tools[0]",
    ]
    assert config.audio.output.voice == "verse"
    told = notice("event_1", "dropped", True, dropped)["error"]["message"]
    assert "session.brand_new_field" in told  # the client is told what was left out
    assert config.audio.output.format.type == "audio/pcm"  # the default format
    assert session["brand_new_field"] == {"x": 1}  # the history's copy is left alone
    # A field that cannot go alone: its object goes (here: the default turn detection).
    session = {"instructions": "Kind.", "audio": {"input": {"turn_detection": {"type": "v9"}}}}
    config, dropped = resumed_config(spec, session)
    assert dropped == ["session.audio.input.turn_detection"]
    assert config.instructions == "Kind."  # type: ignore[union-attr]


def test_replayed_items_are_ga() -> None:
    history = History()
    beta_answer = {
        "object": "realtime.item",
        **item("a", "Hello", "assistant"),
        "content": [{"type": "text", "text": "Hello"}],
    }
    history.observe({"type": "conversation.item.created", "item": beta_answer})
    history.observe(added({"id": "odd", "type": "mystery"}, "a"))
    assert replayed_items(history) == [item("a", "Hello", "assistant")]
