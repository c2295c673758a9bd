"""Responses: create, overrides, out-of-band, cancel, output."""

from __future__ import annotations

import base64

import pytest

from transceiver.protocol.effects import CancelResponse, StartResponse
from transceiver.protocol.errors import ProtocolMisuse

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_response_create_starts_a_response(make_session, kit) -> None:
    h = make_session()
    user = h.user_text("hi")
    events, start = h.create_response()
    assert kit.types(events) == ["response.created"]
    response = events[0]["response"]
    assert response["object"] == "realtime.response" and response["id"].startswith("resp_")
    assert response["status"] == "in_progress" and response["status_details"] is None
    assert response["output"] == [] and response["usage"] is None
    assert response["conversation_id"] == h.session.conversation.id
    assert response["output_modalities"] == ["audio"] and response["metadata"] is None
    assert response["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
    }
    request = start.request
    assert request.response_id == response["id"] and request.in_conversation
    assert [c.item["id"] for c in request.context] == [user]
    assert request.instructions == h.session.config.instructions
    assert request.output_modalities == ("audio",) and request.output_format == "audio/pcm"
    assert request.model == "gpt-realtime" and request.tools == ()


def test_per_response_overrides_apply_to_that_response_only(make_session, kit) -> None:
    h = make_session()
    h.user_text()
    events, start = h.create_response(
        instructions="Answer in French.",
        output_modalities=["text"],
        tools=[TOOL],
        tool_choice="required",
        metadata={"topic": "weather"},
        max_output_tokens=50,
        audio={"output": {"voice": "verse", "format": {"type": "audio/pcmu"}}},
    )
    response = events[0]["response"]
    assert response["output_modalities"] == ["text"] and response["metadata"] == {
        "topic": "weather"
    }
    assert response["max_output_tokens"] == 50
    assert response["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "verse"}
    request = start.request
    assert request.instructions == "Answer in French." and request.output_modalities == ("text",)
    assert request.tools == (TOOL,) and request.tool_choice == "required"
    assert request.metadata == {"topic": "weather"} and request.max_output_tokens == 50
    assert request.voice == "verse" and request.output_format == "audio/pcmu"
    h.session.response_finished(request.response_id, 0)
    h.drain()
    _, start = h.create_response()
    assert start.request.instructions == h.session.config.instructions
    assert start.request.output_modalities == ("audio",) and start.request.tools == ()
    assert start.request.voice == "alloy" and start.request.max_output_tokens is None


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"bogus": 1}, "response.bogus", "unknown_parameter"),
        ({"output_modalities": ["audio", "text"]}, "response.output_modalities", "invalid_value"),
        ({"conversation": "other"}, "response.conversation", "invalid_value"),
        ({"metadata": {str(n): "v" for n in range(17)}}, "response.metadata", "invalid_value"),
        ({"metadata": {"k": 5}}, "response.metadata", "invalid_value"),
        ({"max_output_tokens": 0}, "response.max_output_tokens", "invalid_value"),
        ({"instructions": 5}, "response.instructions", "invalid_value"),
        ({"tools": [{"type": "function", "name": ""}]}, "response.tools[0].name", "invalid_value"),
        ({"input": "hi"}, "response.input", "invalid_value"),
        (
            {"input": [{"type": "item_reference", "id": "item_nope"}]},
            "response.input[0].id",
            "item_not_found",
        ),
        (
            {"audio": {"output": {"format": {"type": "audio/mp3"}}}},
            "response.audio.output.format.type",
            "invalid_value",
        ),
        ({"conversation": 5}, "response.conversation", "invalid_value"),
        ({"metadata": "topic"}, "response.metadata", "invalid_value"),
        ({"max_output_tokens": True}, "response.max_output_tokens", "invalid_value"),
        ({"max_output_tokens": 5.0}, "response.max_output_tokens", "invalid_value"),
        ({"tool_choice": 5}, "response.tool_choice", "invalid_value"),
        ({"tool_choice": {"foo": 1}}, "response.tool_choice", "invalid_value"),
        (
            {"tool_choice": {"type": "function"}},
            "response.tool_choice.name",
            "missing_required_parameter",
        ),
        ({"tool_choice": "any"}, "response.tool_choice", "invalid_value"),
        (
            {"tool_choice": {"type": "mcp"}},
            "response.tool_choice.server_label",
            "missing_required_parameter",
        ),
        # A forced tool must be one the response offers.
        (
            {"tool_choice": {"type": "function", "name": "f"}},
            "response.tool_choice.name",
            "invalid_value",
        ),
        (
            {"tool_choice": {"type": "mcp", "server_label": "deepwiki"}},
            "response.tool_choice.server_label",
            "invalid_value",
        ),
        ({"temperature": 0.9}, "response.temperature", "unknown_parameter"),  # beta only
        ({"prompt": {"id": "greet"}}, "response.prompt", "invalid_value"),  # no library
        ({"audio": {"output": {"speed": 1.2}}}, "response.audio.output.speed", "unknown_parameter"),
        # An unknown parameter is named before a bad value.
        ({"instructions": 5, "bogus": 1}, "response.bogus", "unknown_parameter"),
    ],
)
def test_invalid_response_create(make_session, kit, params, param, code) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": "response.create", "response": params, "event_id": "r"}))
    assert error["param"] == param and error["code"] == code and error["event_id"] == "r"
    assert h.effects() == [] and h.session.active_response_ids() == []
    assert kit.types(h.send({"type": "response.create"})) == ["response.created"]


def test_response_must_be_an_object(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": "response.create", "response": ["text"]}))
    assert error["param"] == "response" and error["code"] == "invalid_value"


def test_explicit_defaults_are_accepted(make_session, kit) -> None:
    h = make_session()
    events, start = h.create_response(
        metadata=None, max_output_tokens="inf", conversation=h.session.conversation.id
    )
    assert events[0]["response"]["max_output_tokens"] == "inf"
    assert start.request.max_output_tokens is None and start.request.metadata is None
    assert start.request.in_conversation


def test_one_default_conversation_response_at_a_time(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    error = kit.error_of(h.send({"type": "response.create", "event_id": "second"}))
    assert error["code"] == "conversation_already_has_active_response"
    assert error["event_id"] == "second"
    assert error["message"] == (
        f"Conversation already has an active response in progress: {rid}. Wait until the "
        "response is finished before creating a new one."
    )
    oob = [h.start(conversation="none", metadata={"n": str(n)}) for n in range(2)]
    assert set(h.session.active_response_ids()) == {rid, *oob}
    h.session.response_finished(rid, 0)
    h.drain()
    assert kit.types(h.send({"type": "response.create"})) == ["response.created"]


def test_out_of_band_response_stays_out_of_the_conversation(make_session, kit) -> None:
    h = make_session()
    user = h.user_text("classify me")
    events, start = h.create_response(
        conversation="none",
        metadata={"topic": "classification"},
        output_modalities=["text"],
        input=[
            {"type": "item_reference", "id": user},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Label it."}],
            },
        ],
    )
    response = events[0]["response"]
    assert response["conversation_id"] is None
    assert response["metadata"] == {"topic": "classification"}
    context = start.request.context
    assert [c.item["id"] for c in context][0] == user and len(context) == 2
    assert not start.request.in_conversation
    rid = start.request.response_id
    h.session.response_text_delta(rid, "positive")
    h.session.response_finished(rid, 0)
    events = h.drain()
    assert not any(e["type"].startswith("conversation.item.") for e in events)
    done = kit.one(events, "response.done")["response"]
    assert done["conversation_id"] is None and done["metadata"] == {"topic": "classification"}
    output_id = done["output"][0]["id"]
    assert output_id.startswith("item_")
    assert kit.error_of(h.send({"type": "conversation.item.retrieve", "item_id": output_id}))


def test_empty_input_means_no_context(make_session, kit) -> None:
    h = make_session()
    h.user_text()
    _, start = h.create_response(input=[])
    assert start.request.context == () and start.request.in_conversation


def test_cancel_with_nothing_active(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(h.send({"type": "response.cancel", "event_id": "c"}))
    assert error["code"] == "response_cancel_not_active" and error["event_id"] == "c"
    assert error["message"] == "Cancellation failed: no active response found"
    rid = h.start()
    error = kit.error_of(h.send({"type": "response.cancel", "response_id": "resp_other"}))
    assert error["code"] == "response_cancel_not_active"
    assert h.session.active_response_ids() == [rid]


@pytest.mark.parametrize("beta", [False, True])
def test_cancel_mid_audio(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    rid = h.start()
    h.session.response_transcript_delta(rid, "Once upon")
    h.session.response_audio_delta(rid, b"\x01\x00" * 2400)
    h.drain()
    events = h.send({"type": "response.cancel", "event_id": "c"})
    names = (
        ["response.audio.done", "response.audio_transcript.done"]
        if beta
        else ["response.output_audio.done", "response.output_audio_transcript.done"]
    )
    expected = [*names, "response.content_part.done", "response.output_item.done"]
    expected += [] if beta else ["conversation.item.done"]
    assert kit.types(events) == [*expected, "response.done"]
    assert events[1]["transcript"] == "Once upon"
    item_done = kit.one(events, "response.output_item.done")["item"]
    assert item_done["status"] == "incomplete"
    response = events[-1]["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert response["output"] == [item_done] and response["usage"] is not None
    assert CancelResponse(rid, "client_cancelled") in h.effects()
    assert h.session.response_audio_delta(rid, b"\x00\x00") is False  # dropped
    assert h.session.response_transcript_delta(rid, " a time") is False
    assert h.session.response_function_call(rid, "f") is None
    h.session.response_finished(rid, 0)
    h.session.response_failed(rid, "late", 0)
    assert h.drain() == []


def test_cancel_by_response_id_reaches_out_of_band_responses(make_session, kit) -> None:
    h = make_session()
    default = h.start()
    oob = h.start(conversation="none")
    events = h.send({"type": "response.cancel", "response_id": oob})
    assert kit.types(events) == ["response.done"]
    assert events[0]["response"]["id"] == oob
    assert h.session.active_response_ids() == [default]
    assert kit.types(h.send({"type": "response.cancel"})) == ["response.done"]


def test_audio_response_events(make_session, kit) -> None:
    h = make_session()
    user = h.user_text()
    rid = h.start()
    chunks = [b"\x01\x02" * 1200, b"\x03\x04" * 2400, b"\x05\x06" * 1200]
    for word, chunk in zip(["Hi", " there", "!"], chunks, strict=True):
        h.session.response_transcript_delta(rid, word)
        h.session.response_audio_delta(rid, chunk)
    h.session.response_finished(rid, 0)
    events = h.drain()
    assert kit.types(events)[:3] == [
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert events[1]["previous_item_id"] == user
    assert events[2]["part"] == {"type": "audio", "transcript": ""}
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert b"".join(base64.b64decode(e["delta"]) for e in deltas) == b"".join(chunks)
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
    )
    assert kit.one(events, "response.output_audio_transcript.done")["transcript"] == transcript
    assert transcript == "Hi there!"
    assert kit.types(events)[-3:] == [
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    response = events[-1]["response"]
    assert response["status"] == "completed" and response["status_details"] is None
    assert response["output"] == [
        {
            "id": events[0]["item"]["id"],
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "Hi there!"}],
        }
    ]
    usage = response["usage"]
    assert usage["output_token_details"]["audio_tokens"] == 4  # 200 ms at 1 token per 50 ms
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    stored = h.retrieve(response["output"][0]["id"])["content"][0]
    assert base64.b64decode(stored["audio"]) == b"".join(chunks)


@pytest.mark.parametrize("beta", [False, True])
def test_text_response_events(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    params = {"modalities": ["text"]} if beta else {"output_modalities": ["text"]}
    events, start = h.create_response(**params)
    assert events[0]["response"]["modalities" if beta else "output_modalities"] == ["text"]
    rid = start.request.response_id
    for delta in ("Bonjour", ", ", "monde"):
        h.session.response_text_delta(rid, delta)
    h.session.response_finished(rid, 0)
    events = h.drain()
    prefix = "response.text" if beta else "response.output_text"
    done = kit.one(events, f"{prefix}.done")
    assert done["text"] == "Bonjour, monde"
    assert kit.one(events, "response.content_part.done")["part"] == {
        "type": "text",
        "text": "Bonjour, monde",
    }
    item = kit.one(events, "response.output_item.done")["item"]
    part_type = "text" if beta else "output_text"
    assert item["content"] == [{"type": part_type, "text": "Bonjour, monde"}]


def test_function_call_output(make_session, kit) -> None:
    h = make_session(session_overrides={"tools": [TOOL]})
    rid = h.start()
    call_id = h.session.response_function_call(rid, "get_weather")
    assert call_id is not None and call_id.startswith("call_")
    for delta in ('{"city":', ' "Paris"}'):
        h.session.response_arguments_delta(rid, delta)
    h.session.response_finished(rid, 0)
    events = h.drain()
    added = kit.one(events, "response.output_item.added")["item"]
    assert added["type"] == "function_call" and added["name"] == "get_weather"
    assert added["call_id"] == call_id
    done = kit.one(events, "response.function_call_arguments.done")
    assert done["name"] == "get_weather" and done["call_id"] == call_id
    assert done["arguments"] == '{"city": "Paris"}' and done["item_id"] == added["id"]
    output = kit.one(events, "response.done")["response"]["output"]
    assert output[0]["type"] == "function_call" and output[0]["arguments"] == '{"city": "Paris"}'
    result = {"type": "function_call_output", "call_id": call_id, "output": '{"t": 21}'}
    events = h.send({"type": "conversation.item.create", "item": result})
    assert events[0]["previous_item_id"] == added["id"]
    assert h.effects() == []  # no automatic response


def test_message_then_function_call_in_one_response(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    h.session.response_transcript_delta(rid, "Let me check.")
    h.session.response_audio_delta(rid, b"\x00\x00" * 480)
    call_id = h.session.response_function_call(rid, "lookup", '{"q": 1}', call_id="call_given")
    assert call_id == "call_given"
    h.session.response_finished(rid, 0)
    events = h.drain()
    indices = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert indices == [0, 1]
    output = kit.one(events, "response.done")["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]


def test_arguments_without_an_open_function_call_is_shell_misuse(make_session) -> None:
    h = make_session()
    rid = h.start()
    with pytest.raises(ProtocolMisuse):
        h.session.response_arguments_delta(rid, "{}")


def test_response_failed(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    h.session.response_text_delta(rid, "partial")
    h.session.response_failed(rid, "The model crashed.", 0)
    events = h.drain()
    assert kit.types(events)[-2:] == ["response.done", "error"]
    response = events[-2]["response"]
    assert response["status"] == "failed"
    assert response["status_details"]["type"] == "failed"
    assert response["status_details"]["error"]["message"] == "The model crashed."
    assert events[-1]["error"]["type"] == "server_error"
    assert h.session.active_response_ids() == []
    assert kit.types(h.send({"type": "response.create"})) == ["response.created"]


def test_response_incomplete(make_session, kit) -> None:
    h = make_session()
    rid = h.start()
    h.session.response_text_delta(rid, "cut")
    h.session.response_finished(rid, 0, reason="max_output_tokens")
    response = kit.one(h.drain(), "response.done")["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_output_for_unknown_responses_is_dropped(make_session) -> None:
    h = make_session()
    assert h.session.response_text_delta("resp_nope", "x") is False
    assert h.session.response_audio_delta("resp_nope", b"xx") is False
    h.session.response_finished("resp_nope", 0)
    assert h.drain() == [] and not any(isinstance(e, StartResponse) for e in h.effects())


def test_beta_response_overrides_map_to_ga(make_session, kit) -> None:
    h = make_session(beta=True)
    events, start = h.create_response(
        modalities=["text"],
        voice="ash",
        output_audio_format="g711_ulaw",
        temperature=0.9,
        max_response_output_tokens=42,
        instructions="Short.",
    )
    response = events[0]["response"]
    assert response["modalities"] == ["text"] and response["voice"] == "ash"
    assert response["output_audio_format"] == "g711_ulaw"
    assert response["max_output_tokens"] == 42
    request = start.request
    assert request.output_modalities == ("text",) and request.voice == "ash"
    assert request.output_format == "audio/pcmu" and request.max_output_tokens == 42
    error = kit.error_of(
        h.send({"type": "response.create", "response": {"output_audio_format": "mp3"}})
    )
    assert error["param"] == "response.output_audio_format"


@pytest.mark.parametrize("voice", [{}, 5, ["ash"]])
def test_invalid_per_response_voice(make_session, kit, voice) -> None:
    h = make_session()
    error = kit.error_of(
        h.send({"type": "response.create", "response": {"audio": {"output": {"voice": voice}}}})
    )
    assert error["param"].startswith("response.audio.output.voice")
    _, start = h.create_response(audio={"output": {"voice": {"id": "voice_9"}}})
    assert start.request.voice == {"id": "voice_9"}
