"""The stream checker itself (tests/invariants.py): a good stream passes, and each broken
invariant fails, so that the tests that rely on it can fail."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.invariants import check_stream

_ids = itertools.count()


def _event(etype: str, **fields: Any) -> dict[str, Any]:
    return {"type": etype, "event_id": f"event_{next(_ids)}", **fields}


def _response(rid: str, conversation: str | None = "conv_1", **fields: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "conversation_id": conversation,
        "audio": {"output": {"format": {"type": "audio/pcm"}}},
        **fields,
    }


def _good() -> list[dict[str, Any]]:
    item = {"id": "item_1", "type": "message", "role": "assistant", "content": []}
    return [
        _event("session.created", session={}),
        _event("input_audio_buffer.speech_started", item_id="item_0"),
        _event("input_audio_buffer.speech_stopped", item_id="item_0"),
        _event("input_audio_buffer.committed", item_id="item_0"),
        _event("response.created", response=_response("resp_1")),
        _event("response.output_item.added", response_id="resp_1", output_index=0, item=item),
        _event(
            "response.content_part.added",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            content_index=0,
        ),
        _event(
            "response.output_text.delta",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            delta="Hel",
        ),
        _event(
            "response.output_text.delta",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            delta="lo",
        ),
        _event("response.output_text.done", response_id="resp_1", item_id="item_1", text="Hello"),
        _event(
            "response.content_part.done",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            content_index=0,
        ),
        _event("response.output_item.done", response_id="resp_1", output_index=0, item=item),
        _event(
            "response.done",
            response={**_response("resp_1"), "status": "completed", "output": [item], "usage": {}},
        ),
    ]


def _check(events: list[dict[str, Any]], **options: Any) -> None:
    check_stream(events, sdk=False, **options)


def test_a_well_formed_stream_passes() -> None:
    _check(_good())


def _without(events: list[dict[str, Any]], etype: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] != etype]


def _broken_streams() -> dict[str, list[dict[str, Any]]]:
    good = _good()
    repeated_id = [*good[:-1], {**good[-1], "event_id": good[1]["event_id"]}]
    delta_after_done = [*good, good[7] | {"event_id": "event_late"}]
    wrong_text = [
        *good[:9],
        {**good[9], "text": "Help"},
        *good[10:],
    ]
    second_index = [*good[:5], {**good[5], "output_index": 1}, *good[6:]]
    created_twice = [*good[:5], {**good[4], "event_id": "event_again"}, *good[5:]]
    overlapping = [
        *good[:5],
        _event("response.created", response=_response("resp_2")),
        *good[5:],
    ]
    other_item = [*good[:3], {**good[3], "item_id": "item_9"}, *good[4:]]
    return {
        "a repeated event_id": repeated_id,
        "a delta after response.done": delta_after_done,
        "deltas that do not add up": wrong_text,
        "an output_index that skips": second_index,
        "a response created twice": created_twice,
        "two default responses at once": overlapping,
        "a part without its done": _without(good, "response.content_part.done"),
        "an item without its done": _without(good, "response.output_item.done"),
        "a response without response.done": _without(good, "response.done"),
        "committed names another item": other_item,
        "no session.created first": good[1:],
    }


@pytest.mark.parametrize("name", list(_broken_streams()))
def test_each_broken_invariant_fails(name: str) -> None:
    with pytest.raises(AssertionError):
        _check(_broken_streams()[name])


def test_a_closed_session_may_leave_a_response_open() -> None:
    _check(_without(_good(), "response.done"), allow_open=True)
