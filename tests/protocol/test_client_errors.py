"""Bad client input becomes an ``error`` and the session goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from transceiver.protocol import SessionKind


def still_works(h: Any, kit: Any) -> None:
    events = h.send({"type": "session.update", "session": {"instructions": "still here"}})
    assert kit.types(events) == ["session.updated"]
    assert events[0]["session"]["instructions"] == "still here"


@pytest.mark.parametrize("beta", [False, True])
def test_unknown_type_echoes_event_id_with_param_type(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    error = kit.error_of(h.send({"type": "scooby.dooby.doo", "event_id": "my_evt_1"}))
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert error["param"] == "type" and error["event_id"] == "my_evt_1"
    assert error["message"].startswith("Invalid value: 'scooby.dooby.doo'")
    still_works(h, kit)


def test_missing_type_is_invalid_event(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(h.send({"event_id": "event_567"}))
    assert error["code"] == "invalid_event" and error["event_id"] == "event_567"
    assert error["message"] == "The 'type' field is missing."
    still_works(h, kit)


@pytest.mark.parametrize("etype", [None, 5, ["session.update"], {"a": 1}, ""])
def test_type_of_wrong_kind(make_session, kit, etype) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": etype, "event_id": "t1"}))
    assert error["param"] == "type" and error["event_id"] == "t1"
    still_works(h, kit)


NOISE = '{"type": "session.update", "session": {"audio": {"input": {"noise_reduction": %s}}}}'


@pytest.mark.parametrize(
    "raw",
    [
        "not json {",
        "",
        b"\xff\xfe\x00",
        "{'type': 'session.update'}",
        '{"type": "x"',
        NOISE % '{"type": "near_field", "strength": NaN}',
        NOISE % '{"type": "near_field", "strength": -Infinity}',
        NOISE % '{"type": "near_field", "strength": 1e999}',
    ],
)
def test_non_json_is_an_error_without_event_id(make_session, kit, raw) -> None:
    h = make_session()
    error = kit.error_of(h.send(raw))
    assert error["type"] == "invalid_request_error" and error["event_id"] is None
    still_works(h, kit)


def test_finite_floats_in_json_text_are_fine(make_session, kit) -> None:
    h = make_session()
    events = h.send(NOISE % '{"type": "far_field", "strength": 2.5e-1}')
    noise = kit.one(events, "session.updated")["session"]["audio"]["input"]["noise_reduction"]
    assert noise == {"type": "far_field", "strength": 0.25}


@pytest.mark.parametrize(
    "raw",
    ["[1, 2]", '[{"type": "input_audio_buffer.clear"}]', "5", "null", '"session.update"', "true"],
)
def test_json_that_is_not_an_object(make_session, kit, raw) -> None:
    h = make_session()
    error = kit.error_of(h.send(raw))
    assert error["code"] == "invalid_event" and error["event_id"] is None
    still_works(h, kit)


@pytest.mark.parametrize("event_id", [5, None, ["a"], {"x": 1}])
def test_event_id_that_is_not_a_string_is_not_echoed(make_session, kit, event_id) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": "bogus", "event_id": event_id}))
    assert error["event_id"] is None


def test_json_text_and_bytes_events_are_accepted(make_session, kit) -> None:
    h = make_session()
    assert kit.types(h.send('{"type": "input_audio_buffer.clear", "event_id": "c1"}')) == [
        "input_audio_buffer.cleared"
    ]
    assert kit.types(h.send(b'{"type": "input_audio_buffer.clear"}')) == [
        "input_audio_buffer.cleared"
    ]


def test_success_events_never_echo_the_client_event_id(make_session, kit) -> None:
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": None}}})
    h.send(
        {
            "type": "input_audio_buffer.append",
            "audio": kit.b64(b"\0" * 4800),
            "event_id": "evt_secret_1",
        }
    )
    events = h.send({"type": "input_audio_buffer.commit", "event_id": "evt_secret_2"})
    events += h.send({"type": "input_audio_buffer.clear", "event_id": "evt_secret_3"})
    events += h.send({"type": "response.create", "event_id": "evt_secret_4"})
    assert kit.types(events)[:4] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "input_audio_buffer.cleared",
    ]
    assert "evt_secret" not in json.dumps(events)


def test_errors_for_one_event_do_not_block_the_next(make_session, kit) -> None:
    h = make_session()
    for raw in (
        "nope",
        {"type": "nope"},
        {"type": "response.cancel"},
        {"type": "conversation.item.retrieve", "item_id": "missing"},
    ):
        assert kit.types(h.send(raw)) == ["error"]
    assert kit.types(h.send({"type": "response.create"})) == ["response.created"]


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call",
                "name": "f",
                "call_id": "c",
                "arguments": "",
                "x": deep(900),
            },
        },
        {"type": "session.update", "session": {"prompt": {"id": "pmpt_1", "variables": deep(900)}}},
        {
            "type": "session.update",
            "session": {
                "tools": [
                    {"type": "function", "name": "f", "parameters": {"a": deep(500)}},
                ]
            },
        },
        {"type": "response.create", "response": {"metadata": deep(300)}},
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_deeply_nested_events_are_refused(make_session, kit, event, as_json) -> None:
    h = make_session()
    error = kit.error_of(h.send(json.dumps(event) if as_json else event))
    assert error["code"] == "invalid_event"
    still_works(h, kit)


def test_json_nested_past_the_parser_limit(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(h.send("[" * 100_000 + "]" * 100_000))
    assert error["event_id"] is None
    still_works(h, kit)


def test_moderately_nested_tool_schema_is_fine(make_session, kit) -> None:
    h = make_session()
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    events = h.send(
        {
            "type": "session.update",
            "session": {"tools": [{"type": "function", "name": "f", "parameters": schema}]},
        }
    )
    assert events[0]["session"]["tools"][0]["parameters"] == schema


def test_output_audio_buffer_clear_is_refused_over_websocket(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": "output_audio_buffer.clear", "event_id": "o1"}))
    assert error["event_id"] == "o1"


def test_transcription_session_refuses_response_create(make_session, kit) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION)
    error = kit.error_of(h.send({"type": "response.create", "event_id": "r1"}))
    assert error["event_id"] == "r1"
    assert h.effects() == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('{"type":"input_audio_buffer.append","audio":"A"}', "invalid_value"),  # not base64
        ('{"type": "input_audio_buffer.append", "audio": "AA\x01A"}', "invalid_json"),
        ('{"type":"input_audio_buffer.append","audio":"}', "invalid_json"),
        ('{"type":"input_audio_buffer.append","audio":"AAAA\\u0000"}', "invalid_value"),
    ],
)
def test_a_bad_bare_append_gets_the_general_parse_error(make_session, kit, raw, code) -> None:
    # A bare append takes a path without a general parse (transceiver/protocol/wire.py
    # bare_append_audio); a bad one gets the error that parse gives, and nothing is buffered.
    h = make_session()
    error = kit.error_of(h.send(raw))
    assert error["code"] == code and error["event_id"] is None
    assert h.session._input.audio == bytearray()
    good = '{"type":"input_audio_buffer.append","audio":"AAAA"}'
    assert h.send(good) == [] and bytes(h.session._input.audio) == b"\0\0\0"
    still_works(h, kit)
