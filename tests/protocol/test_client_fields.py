"""What a client event may carry: its own fields and an item's, no others (each answered
``unknown_parameter``, as OpenAI answers one), and what ``response.create`` may hold and ask
for: its ``input``'s audio read in the session's format and bounded as a created item's, a
bounded number of out-of-band responses, PCM on a media session, and (beta) a checked
``modalities``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.protocol.conftest import b64
from tests.protocol.test_items import spoken_response
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.items import text_size
from transceiver.protocol.session import MAX_OUT_OF_BAND_RESPONSES


def _user(*parts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts), **fields}


_TEXT = {"type": "input_text", "text": "hi"}


@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "response.create", "instructions": "be brief"}, "instructions"),
        ({"type": "response.create", "modalities": ["text"]}, "modalities"),
        (
            {"type": "conversation.item.create", "item": _user(_TEXT), "previous_id": "x"},
            "previous_id",
        ),
        ({"type": "input_audio_buffer.clear", "bogus": 1}, "bogus"),
        ({"type": "conversation.item.delete", "item_id": "x", "x" * 500: 1}, "x" * 64 + "…"),
    ],
)
def test_an_events_unknown_field_is_an_error(make_session, kit, event, param) -> None:
    h = make_session()
    error = kit.error_of(h.send({**event, "event_id": "ev_1"}))
    assert (error["code"], error["param"], error["event_id"]) == (
        "unknown_parameter",
        param,
        "ev_1",
    )
    assert h.send({"type": "input_audio_buffer.clear"})  # the session goes on


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        (_user(_TEXT, foo=1), "item.foo", "unknown_parameter"),
        (_user({**_TEXT, "bogus": [1]}), "item.content[0].bogus", "unknown_parameter"),
        (
            _user({"type": "input_audio", "audio": b64(b"\0" * 4800), "text": "words"}),
            "item.content[0].text",
            "unknown_parameter",
        ),
        (
            {
                "type": "function_call",
                "name": "f",
                "call_id": "c",
                "arguments": "{}",
                "content": "ab",
            },
            "item.content",
            "unknown_parameter",
        ),
        (
            {"type": "function_call_output", "call_id": "c", "output": "ok", "name": "f"},
            "item.name",
            "unknown_parameter",
        ),
        (_user(_TEXT, status="exploded"), "item.status", "invalid_value"),
        (
            _user({"type": "input_audio", "transcript": [""] * 1000}),
            "item.content[0].transcript",
            "invalid_value",
        ),
        (_user(_TEXT, id=12345), "item.id", "invalid_value"),
        (_user(_TEXT, id="x" * 65), "item.id", "invalid_value"),
    ],
)
def test_an_items_unknown_or_bad_field_is_an_error(make_session, kit, item, param, code) -> None:
    """Before, a stray ``content`` on a function call ended the session (1011, no error),
    and a ``text`` on an audio part became the user's words."""
    h = make_session()
    error = kit.error_of(h.send({"type": "conversation.item.create", "item": item}))
    assert (error["code"], error["param"]) == (code, param)
    events = h.send({"type": "response.create", "response": {"input": [item]}})
    assert kit.error_of(events)["param"] == param.replace("item", "response.input[0]", 1)
    assert not h.session.closed and len(h.session.conversation) == 0


def test_an_items_known_fields_pass(make_session, kit) -> None:
    h = make_session()
    item = _user(_TEXT, id="item_mine", status=None, object="realtime.item")
    done = kit.one(
        h.send({"type": "conversation.item.create", "item": item}), "conversation.item.done"
    )
    assert done["item"]["id"] == "item_mine" and done["item"]["status"] == "completed"


def test_conversation_text_is_bounded() -> None:
    conversation = Conversation("conv_1", max_text_chars=1000)
    item = {"id": "a", "type": "message", "role": "user", "content": [{"text": "x" * 900}]}
    conversation.add(item)
    with pytest.raises(Exception, match="characters of text") as refused:
        conversation.add({**item, "id": "b"})
    assert getattr(refused.value, "code", None) == "conversation_full"
    conversation.delete("a")
    conversation.add({**item, "id": "b"})  # room again
    # Every element holds memory, strings or not: an array of empty strings counts.
    assert text_size({"content": [""] * 5000}) > 5000


def test_response_input_audio_is_in_the_sessions_format_and_bounded(make_session, kit) -> None:
    h = make_session()
    update = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    h.send({"type": "session.update", "session": update})
    second_of_pcmu = _user({"type": "input_audio", "audio": b64(b"\xff" * 8000)})
    _, start = h.create_response(conversation="none", input=[second_of_pcmu])
    (context,) = start.request.context
    assert context.audio_format is AudioFormatType.PCMU
    assert context.audio_format.duration_ms(len(context.audio or b"")) == 1000
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    too_much = _user({"type": "input_audio", "audio": b64(b"\0" * (12 * 1024 * 1024))})
    events = h.send({"type": "response.create", "response": {"input": [too_much]}})
    error = kit.error_of(events)
    assert (error["code"], error["param"]) == (
        "audio_too_large",
        "response.input[0].content[0].audio",
    )


def test_out_of_band_responses_are_bounded(make_session, kit) -> None:
    h = make_session()
    for _ in range(MAX_OUT_OF_BAND_RESPONSES):
        h.start(conversation="none")
    error = kit.error_of(h.send({"type": "response.create", "response": {"conversation": "none"}}))
    assert error["code"] == "too_many_responses"
    h.session.response_finished(h.session.active_response_ids()[0], 0)
    h.start(conversation="none")  # one ended: room again
    h.start()  # the default conversation's own response is not one of them


def test_a_media_sessions_response_keeps_pcm(make_session, kit) -> None:
    """Its audio goes to the track as PCM: another format would play as noise."""
    h = make_session(media=True)
    pcmu = {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}
    events = h.send({"type": "response.create", "response": pcmu})
    assert kit.error_of(events)["param"] == "response.audio.output.format"


@pytest.mark.parametrize("modalities", ["audio", [], ["banana"]])
def test_beta_response_modalities_are_checked(make_session, kit, modalities) -> None:
    h = make_session(beta=True)
    events = h.send({"type": "response.create", "response": {"modalities": modalities}})
    assert kit.error_of(events)["param"] == "response.modalities"


def test_beta_nulls_mean_not_given(make_session, kit) -> None:
    """A null ``modalities`` keeps the session's (audio), where it made the reply text;
    null formats leave the session's, as GA's nulls do."""
    h = make_session(beta=True)
    session = {"input_audio_format": None, "output_audio_format": None}
    assert kit.types(h.send({"type": "session.update", "session": session})) == ["session.updated"]
    _, start = h.create_response(modalities=None, output_audio_format=None)
    assert start.request.output_modalities == ("audio",)


def test_truncate_needs_its_content_index(make_session, kit) -> None:
    h = make_session()
    item_id, _ = spoken_response(h)
    event = {"type": "conversation.item.truncate", "item_id": item_id, "audio_end_ms": 0}
    error = kit.error_of(h.send(event))
    assert (error["code"], error["param"]) == ("missing_required_parameter", "content_index")
    event["content_index"] = 0
    assert kit.types(h.send(event)) == ["conversation.item.truncated"]
