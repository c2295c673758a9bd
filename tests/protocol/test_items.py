"""Conversation items: create, retrieve, delete, truncate."""

from __future__ import annotations

import base64
from typing import Any

import pytest


def create(h: Any, item: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return list(h.send({"type": "conversation.item.create", "item": item, **extra}))


def text_item(text: str = "hi", role: str = "user", **extra: Any) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}], **extra}


def context_ids(h: Any) -> list[str]:
    """The conversation order, as a backend sees it in ``StartResponse``."""
    _, start = h.create_response()
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    return [c.item["id"] for c in start.request.context]


@pytest.mark.parametrize("role", ["user", "system", "assistant"])
def test_create_text_message(make_session, kit, role) -> None:
    h = make_session()
    events = create(h, text_item("hello", role), event_id="i1")
    assert kit.types(events) == ["conversation.item.added", "conversation.item.done"]
    added, done = events
    assert added["previous_item_id"] is None and added["item"] == done["item"]
    item = added["item"]
    assert item["id"].startswith("item_") and item["status"] == "completed"
    assert item["role"] == role and item["content"][0]["text"] == "hello"
    assert h.effects() == []  # no response


def test_client_item_ids_are_kept_and_chain(make_session, kit) -> None:
    h = make_session()
    first = create(h, text_item(id="msg_001"))[0]
    second = create(h, text_item(id="msg_002"))[0]
    assert first["item"]["id"] == "msg_001" and second["item"]["id"] == "msg_002"
    assert second["previous_item_id"] == "msg_001"
    assert kit.error_of(create(h, text_item(id="msg_001")))["param"] == "item.id"


def test_beta_create_emits_created_with_beta_content_types(make_session, kit) -> None:
    h = make_session(beta=True)
    events = create(
        h,
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "earlier answer"}],
        },
    )
    assert kit.types(events) == ["conversation.item.created"]
    item = events[0]["item"]
    assert item["object"] == "realtime.item" and item["content"][0]["type"] == "text"
    assert h.session.conversation.get(item["id"]).item["content"][0]["type"] == "output_text"


def test_input_audio_is_kept_and_returned_by_retrieve(make_session, kit) -> None:
    h = make_session()
    audio = bytes(range(256)) * 20
    events = create(
        h,
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": kit.b64(audio)}],
        },
    )
    item = events[0]["item"]
    assert "audio" not in item["content"][0] and item["content"][0]["transcript"] is None
    assert "audio" not in events[1]["item"]["content"][0]
    retrieved = h.retrieve(item["id"])
    assert base64.b64decode(retrieved["content"][0]["audio"]) == audio
    (ctx,) = [c for c in h.create_response()[1].request.context if c.item["id"] == item["id"]]
    assert ctx.audio == audio and ctx.audio_format == "audio/pcm"


def test_input_audio_with_bad_base64(make_session, kit) -> None:
    h = make_session()
    events = create(
        h, {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "%%%"}]}
    )
    assert kit.error_of(events)["param"] == "item.content[0].audio"


def test_function_call_and_its_output(make_session, kit) -> None:
    h = make_session()
    call = {
        "type": "function_call",
        "name": "get_weather",
        "call_id": "call_abc",
        "arguments": '{"city": "Paris"}',
    }
    item = create(h, call)[1]["item"]
    assert item["type"] == "function_call" and item["call_id"] == "call_abc"
    output = {"type": "function_call_output", "call_id": "call_abc", "output": '{"t": 21}'}
    events = create(h, output)
    assert kit.types(events) == ["conversation.item.added", "conversation.item.done"]
    assert events[0]["previous_item_id"] == item["id"]


def test_function_call_output_with_unknown_call_id_adds_nothing(make_session, kit) -> None:
    h = make_session()
    first = h.user_text()
    output = {"type": "function_call_output", "call_id": "call_nope", "output": "x"}
    error = kit.error_of(create(h, output, event_id="f1"))
    assert error["param"] == "item.call_id" and error["event_id"] == "f1"
    assert context_ids(h) == [first]


def test_previous_item_id_root_inserts_at_the_start(make_session, kit) -> None:
    h = make_session()
    first = h.user_text("one")
    second = h.user_text("two")
    events = create(h, text_item("zero", "system", id="sys_0"), previous_item_id="root")
    assert events[0]["previous_item_id"] is None
    events = create(h, text_item("one and a half", id="mid"), previous_item_id=first)
    assert events[0]["previous_item_id"] == first
    assert context_ids(h) == ["sys_0", first, "mid", second]


def test_previous_item_id_null_appends(make_session, kit) -> None:
    # Clients replaying history send previous_item_id: null with every item.
    h = make_session()
    ids = [create(h, text_item(str(n)), previous_item_id=None)[0]["item"]["id"] for n in range(3)]
    assert context_ids(h) == ids


def test_unknown_previous_item_id_is_an_error_and_adds_nothing(make_session, kit) -> None:
    h = make_session()
    first = h.user_text()
    error = kit.error_of(create(h, text_item(id="x1"), previous_item_id="item_nope"))
    assert error["param"] == "previous_item_id"
    assert context_ids(h) == [first]
    assert kit.types(create(h, text_item(id="x1"))) == [
        "conversation.item.added",
        "conversation.item.done",
    ]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "audio": "AAAA", "transcript": "hi"}],
            },
            "item.content[0].type",
        ),
        (
            {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]},
            "item.content[0].type",
        ),
        (
            {"type": "message", "role": "user", "content": [{"type": ["input_text"]}]},
            "item.content[0].type",
        ),
        ({"type": "message", "role": "user", "content": ["hi"]}, "item.content[0].type"),
        (
            {"type": "message", "role": "user", "content": [{"type": "input_text"}]},
            "item.content[0].text",
        ),
        ({"type": "message", "role": "robot", "content": []}, "item.role"),
        ({"type": "message", "role": "user", "content": "hi"}, "item.content"),
        ({"type": "reasoning"}, "item.type"),
        ({"type": "function_call", "call_id": "c"}, "item.name"),
        ({"type": "function_call", "name": "f", "call_id": "c", "arguments": {}}, "item.arguments"),
        ({"type": "function_call_output", "call_id": "c"}, "item.output"),
        ("hello", "item"),
    ],
)
def test_invalid_items_are_refused(make_session, kit, item, param) -> None:
    h = make_session()
    error = kit.error_of(create(h, item, event_id="bad"))
    assert error["param"] == param and error["event_id"] == "bad"
    assert len(h.session.conversation) == 0


def test_beta_assistant_audio_creation_refused(make_session, kit) -> None:
    h = make_session(beta=True)
    events = create(
        h,
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "audio", "transcript": "hi"}],
        },
    )
    assert kit.error_of(events)["param"] == "item.content[0].type"


def test_retrieve_and_delete(make_session, kit) -> None:
    h = make_session()
    item_id = h.user_text("keep me")
    assert h.retrieve(item_id)["content"] == [{"type": "input_text", "text": "keep me"}]
    events = h.send({"type": "conversation.item.delete", "item_id": item_id, "event_id": "d"})
    assert kit.types(events) == ["conversation.item.deleted"] and events[0]["item_id"] == item_id
    for etype in ("conversation.item.retrieve", "conversation.item.delete"):
        error = kit.error_of(h.send({"type": etype, "item_id": item_id, "event_id": "e"}))
        assert error["param"] == "item_id" and error["event_id"] == "e"
    assert h.user_text("next") and context_ids(h)[0] != item_id


@pytest.mark.parametrize(
    "etype",
    ["conversation.item.retrieve", "conversation.item.delete", "conversation.item.truncate"],
)
@pytest.mark.parametrize("item_id", ["item_unknown", None, 5, ["x"]])
def test_unknown_item_ids_are_errors(make_session, kit, etype, item_id) -> None:
    h = make_session()
    event = {"type": etype, "item_id": item_id}
    if etype == "conversation.item.truncate":
        event |= {"content_index": 0, "audio_end_ms": 0}
    assert kit.error_of(h.send(event))["param"] == "item_id"


# -- truncate -----------------------------------------------------------------------

CLAUSES = ["Hello there. ", "How are you doing today?"]


def spoken_response(h: Any) -> tuple[str, dict[str, Any]]:
    """An audio response: each transcript delta is followed by 500 ms of audio."""
    rid = h.start()
    for n, clause in enumerate(CLAUSES):
        h.session.response_transcript_delta(rid, clause)
        h.session.response_audio_delta(rid, bytes([n + 1]) * (500 * 48))
    h.session.response_finished(rid, 0)
    done = kit_one(h.drain(), "response.done")
    return str(done["response"]["output"][0]["id"]), done


def kit_one(events: list[dict[str, Any]], etype: str) -> dict[str, Any]:
    (event,) = [e for e in events if e["type"] == etype]
    return event


@pytest.mark.parametrize("beta", [False, True])
def test_truncate_cuts_audio_and_transcript_to_what_was_heard(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    item_id, done = spoken_response(h)
    events = h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 600,
            "event_id": "t",
        }
    )
    assert kit.types(events) == ["conversation.item.truncated"]
    assert events[0]["item_id"] == item_id and events[0]["audio_end_ms"] == 600
    assert events[0]["content_index"] == 0
    part = h.retrieve(item_id)["content"][0]
    audio = base64.b64decode(part["audio"])
    assert audio == b"\x01" * (500 * 48) + b"\x02" * (100 * 48)
    full = "".join(CLAUSES)
    heard = part["transcript"]
    assert heard.startswith(CLAUSES[0].strip()) and full.startswith(heard)
    assert len(CLAUSES[0].strip()) < len(heard) < len(full)
    # Events already handed out are not rewritten by the truncation.
    assert done["response"]["output"][0]["content"][0]["transcript"] == full


def test_truncate_inside_the_first_clause_and_at_zero(make_session, kit) -> None:
    h = make_session()
    item_id, _ = spoken_response(h)
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 250,
        }
    )
    heard = h.retrieve(item_id)["content"][0]["transcript"]
    assert CLAUSES[0].startswith(heard) and len(heard) < len(CLAUSES[0].strip())
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    part = h.retrieve(item_id)["content"][0]
    assert part["transcript"] == "" and part["audio"] == ""


def test_truncate_at_the_end_keeps_everything(make_session, kit) -> None:
    h = make_session()
    item_id, _ = spoken_response(h)
    events = h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 1000,
        }
    )
    assert kit.types(events) == ["conversation.item.truncated"]
    assert h.retrieve(item_id)["content"][0]["transcript"] == "".join(CLAUSES)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"audio_end_ms": 1500}, "audio_end_ms"),
        ({"audio_end_ms": -1}, "audio_end_ms"),
        ({"audio_end_ms": 12.5}, "audio_end_ms"),
        ({"audio_end_ms": "600"}, "audio_end_ms"),
        ({"audio_end_ms": True}, "audio_end_ms"),
        ({"content_index": 1, "audio_end_ms": 100}, "content_index"),
    ],
)
def test_truncate_errors(make_session, kit, fields, param) -> None:
    h = make_session()
    item_id, _ = spoken_response(h)
    event = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        **fields,
        "event_id": "tr",
    }
    error = kit.error_of(h.send(event))
    assert error["param"] == param and error["event_id"] == "tr"
    if fields["audio_end_ms"] == 1500:
        assert error["message"] == "Audio content of 1000ms is already shorter than 1500ms"
    assert len(base64.b64decode(h.retrieve(item_id)["content"][0]["audio"])) == 1000 * 48


def test_truncate_user_or_text_items_is_an_error(make_session, kit) -> None:
    h = make_session()
    h.append_ms(200)
    h.send({"type": "input_audio_buffer.commit"})
    user_audio = h.stream[-1]["item"]["id"]
    for item_id in (user_audio, h.user_text()):
        event = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 50,
        }
        assert kit.error_of(h.send(event))["param"] == "item_id"


def test_truncate_before_response_done_leaves_the_response_output(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    h.session.response_transcript_delta(rid, "Hello there.")
    h.session.response_audio_delta(rid, b"\x01" * (500 * 48))
    events = h.drain()
    item_id = events[0]["item"]["id"]
    truncate = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 100,
    }
    h.session.response_function_call(rid, "lookup", "{}")  # the message item is done
    h.drain()
    assert kit.types(h.send(truncate)) == ["conversation.item.truncated"]
    h.session.response_finished(rid, 0)
    done = kit.one(h.drain(), "response.done")["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "Hello there."
    assert h.retrieve(item_id)["content"][0]["transcript"] == ""


def test_truncate_while_speaking_cancels_the_response(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    for clause in CLAUSES:
        h.session.response_transcript_delta(rid, clause)
        h.session.response_audio_delta(rid, b"\x01" * (500 * 48))
    item_id = h.drain()[0]["item"]["id"]
    bad = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
    # A bad truncation is only an error: the response goes on.
    assert kit.error_of(h.send({**bad, "audio_end_ms": 1500}))["param"] == "audio_end_ms"
    assert not h.effects()
    events = h.send({**bad, "audio_end_ms": 600})
    assert kit.types(events) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "conversation.item.truncated",
    ]
    done = kit.one(events, "response.done")["response"]
    assert done["id"] == rid and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert [type(e).__name__ for e in h.effects()] == ["CancelResponse"]
    heard = h.retrieve(item_id)["content"][0]["transcript"]
    assert heard.startswith(CLAUSES[0].strip()) and len(heard) < len("".join(CLAUSES))
    # Output that was still on its way for the cancelled response is dropped.
    h.session.response_audio_delta(rid, b"\x02" * 480)
    assert h.drain() == []


def test_truncating_a_text_message_being_written_is_an_error(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    h.session.response_text_delta(rid, "Hello")
    item_id = h.drain()[0]["item"]["id"]
    truncate = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 0,
    }
    assert kit.error_of(h.send(truncate))["param"] == "item_id"
    assert not h.effects()


def _image(**part: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_image", **part}]}


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({}, "item.content[0].image_url"),
        ({"image_url": "ftp://example.com/cat.png"}, "item.content[0].image_url"),
        ({"image_url": "data:image/gif;base64,R0lGOD"}, "item.content[0].image_url"),
        ({"image_url": "data:image/png;base64,%%%"}, "item.content[0].image_url"),
        ({"image_url": "https://example.com/cat.png", "detail": "ultra"}, "item.content[0].detail"),
    ],
)
def test_invalid_image_parts_are_refused(make_session, kit, part, param) -> None:
    h = make_session()
    error = kit.error_of(create(h, _image(**part)))
    assert error["param"] == param and error["code"] in (
        "invalid_value",
        "missing_required_parameter",
    )
    assert len(h.session.conversation) == 0


@pytest.mark.parametrize(
    "part",
    [
        {"image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        {"image_url": "https://example.com/cat.jpg"},
    ],
)
def test_image_parts_are_kept(make_session, kit, part) -> None:
    h = make_session()
    created = kit.one(create(h, _image(**part)), "conversation.item.done")
    assert created["item"]["content"][0]["image_url"] == part["image_url"]
