"""Session start and ``session.update``: defaults, partial merges, errors, the beta shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from transceiver.protocol import SessionKind
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import (
    AudioFormat,
    FunctionTool,
    RealtimeSessionConfig,
    ServerVad,
    apply_session_update,
    default_config,
    session_wire,
)
from transceiver.protocol.effects import ResetVad

GA_FIELDS = {
    "type",
    "object",
    "id",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "expires_at",
}
BETA_FIELDS = {
    "object",
    "id",
    "model",
    "modalities",
    "instructions",
    "voice",
    "output_audio_format",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "turn_detection",
    "speed",
    "tracing",
    "truncation",
    "prompt",
    "expires_at",
    "input_audio_noise_reduction",
    "input_audio_format",
    "input_audio_transcription",
    "client_secret",
    "include",
}
SERVER_VAD_FIELDS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
    "create_response",
    "interrupt_response",
}


def update(h: Any, session: Any, **extra: Any) -> list[dict[str, Any]]:
    return list(h.send({"type": "session.update", "session": session, **extra}))


# -- session start ----------------------------------------------------------------


def test_ga_session_created_is_first_and_complete(make_session, kit) -> None:
    h = make_session(model="gpt-realtime-mini", created_at_s=1_700_000_000)
    assert kit.types(h.stream) == ["session.created"]
    session = h.stream[0]["session"]
    assert set(session) == GA_FIELDS  # reasoning and parallel_tool_calls stay absent
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["id"].startswith("sess_") and session["model"] == "gpt-realtime-mini"
    assert session["output_modalities"] == ["audio"]
    assert session["expires_at"] == 1_700_000_000 + 3600
    audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
    assert set(audio_in) == {"format", "transcription", "noise_reduction", "turn_detection"}
    assert set(audio_out) == {"format", "voice", "speed"}
    assert audio_in["format"] == audio_out["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["transcription"] is None and audio_in["noise_reduction"] is None
    vad = audio_in["turn_detection"]
    assert set(vad) == SERVER_VAD_FIELDS and vad["type"] == "server_vad"
    assert vad["threshold"] == 0.5 and vad["prefix_padding_ms"] == 300
    assert vad["idle_timeout_ms"] is None and vad["create_response"] and vad["interrupt_response"]
    assert session["tools"] == [] and session["tool_choice"] == "auto"
    assert session["max_output_tokens"] == "inf" and session["truncation"] == "auto"
    assert session["tracing"] is None and session["prompt"] is None and session["include"] is None


def test_beta_session_created_is_flat_then_conversation_created(make_session, kit) -> None:
    h = make_session(beta=True)
    assert kit.types(h.stream) == ["session.created", "conversation.created"]
    session = h.stream[0]["session"]
    assert set(session) == BETA_FIELDS
    assert session["modalities"] == ["audio", "text"] and session["voice"] == "alloy"
    assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
    assert session["temperature"] == 0.8 and session["max_response_output_tokens"] == "inf"
    assert session["turn_detection"]["type"] == "server_vad"
    conversation = h.stream[1]["conversation"]
    assert conversation["id"].startswith("conv_")
    assert conversation["object"] == "realtime.conversation"


def test_ga_transcription_session_created(make_session, kit) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION)
    assert kit.types(h.stream) == ["session.created"]
    session = h.stream[0]["session"]
    assert session["type"] == "transcription"
    assert session["object"] == "realtime.transcription_session"
    assert set(session["audio"]) == {"input"}
    assert "model" not in session and "instructions" not in session
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_beta_transcription_session_created(make_session) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION, beta=True)
    assert h.stream[0]["type"] == "transcription_session.created"
    session = h.stream[0]["session"]
    assert session["object"] == "realtime.transcription_session"
    assert session["input_audio_format"] == "pcm16"
    assert session["input_audio_transcription"] is None
    assert session["turn_detection"]["type"] == "server_vad"


# -- GA session.update ---------------------------------------------------------------


def test_update_is_a_partial_merge_echoing_the_full_session(make_session, kit) -> None:
    h = make_session()
    before = h.stream[0]["session"]
    events = update(h, {"type": "realtime", "instructions": "Be terse."}, event_id="cli_1")
    updated = kit.one(events, "session.updated")
    assert kit.types(events) == ["session.updated"]
    assert updated["event_id"] != "cli_1" and "cli_1" not in json.dumps(updated)
    assert updated["session"] == {**before, "instructions": "Be terse."}


def test_update_merges_audio_objects_field_by_field(make_session, kit) -> None:
    h = make_session()
    events = update(h, {"type": "realtime", "audio": {"output": {"voice": "marin"}}})
    session = kit.one(events, "session.updated")["session"]
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
        "speed": 1.0,
    }
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    vad = {"type": "server_vad", "threshold": 0.7}
    events = update(h, {"type": "realtime", "audio": {"input": {"turn_detection": vad}}})
    td = kit.one(events, "session.updated")["session"]["audio"]["input"]["turn_detection"]
    assert td["threshold"] == 0.7 and td["prefix_padding_ms"] == 300  # defaults filled in
    assert any(isinstance(e, ResetVad) for e in h.effects())
    assert kit.one(events, "session.updated")["session"]["audio"]["output"]["voice"] == "marin"


def test_the_session_keeps_the_validated_model(make_session, kit) -> None:
    h = make_session()
    vad = {"type": "server_vad", "silence_duration_ms": 800, "create_response": False}
    tool = {"type": "function", "name": "f"}
    events = update(h, {"audio": {"input": {"turn_detection": vad}}, "tools": [tool]})
    config = h.session.config
    assert isinstance(config, RealtimeSessionConfig)
    td = config.audio.input.turn_detection
    assert isinstance(td, ServerVad) and td.silence_duration_ms == 800 and not td.create_response
    assert isinstance(config.tools[0], FunctionTool) and config.tools[0].name == "f"
    shown = kit.one(events, "session.updated")["session"]
    read_only = {"object": "realtime.session", "id": h.session.id, "expires_at": 3600}
    assert shown == {**session_wire(config), **read_only}
    default = default_config(SessionKind.REALTIME, None)
    assert apply_session_update(default, {"audio": {"input": {}}}) == default
    assert apply_session_update(config, {"instructions": "x"}).instructions == "x"
    assert config.instructions != "x"  # a model is never changed in place


@pytest.mark.parametrize(
    "session",
    [{"instructions": "x"}, {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}],
)
def test_an_update_that_keeps_turn_detection_does_not_reset_it(make_session, session) -> None:
    h = make_session()
    update(h, session)
    assert not any(isinstance(e, ResetVad) for e in h.effects())


def test_update_without_type_keeps_the_session_type(make_session, kit) -> None:
    h = make_session()
    events = update(h, {"max_output_tokens": 200})
    assert kit.one(events, "session.updated")["session"]["max_output_tokens"] == 200


@pytest.mark.parametrize(
    ("session", "key", "cleared"),
    [
        ({"instructions": ""}, ("instructions",), ""),
        ({"tools": []}, ("tools",), []),
        (
            {"audio": {"input": {"turn_detection": None}}},
            ("audio", "input", "turn_detection"),
            None,
        ),
        (
            {"audio": {"input": {"transcription": None}}},
            ("audio", "input", "transcription"),
            None,
        ),
        (
            {"audio": {"input": {"noise_reduction": None}}},
            ("audio", "input", "noise_reduction"),
            None,
        ),
    ],
)
def test_update_clears_fields(make_session, kit, session, key, cleared) -> None:
    h = make_session()
    setup = {
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "audio": {
            "input": {
                "transcription": {"model": "whisper-1"},
                "noise_reduction": {"type": "near_field"},
            }
        },
    }
    update(h, {"type": "realtime", **setup})
    value = kit.one(update(h, {"type": "realtime", **session}), "session.updated")["session"]
    for part in key:
        value = value[part]
    assert value == cleared


@pytest.mark.parametrize(
    ("session", "param"),
    [
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"audio": {"input": {"transcription": {"model": "whisper-1", "delay": "later"}}}},
            "session.audio.input.transcription.delay",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 10}}}},
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "session.audio.input.format.rate",
        ),
        ({"audio": {"output": {"speed": 3}}}, "session.audio.output.speed"),
        ({"output_modalities": ["audio", "text"]}, "session.output_modalities"),
        ({"max_output_tokens": 0}, "session.max_output_tokens"),
        ({"tools": [{"type": "function", "name": ""}]}, "session.tools[0].name"),
        ({"tool_choice": 5}, "session.tool_choice"),
        ({"audio": {"output": {"voice": 5}}}, "session.audio.output.voice"),
        ({"model": "gpt-realtime-2"}, "session.model"),
        ({"type": "transcription"}, "session.type"),
    ],
)
def test_invalid_update_is_an_error_and_changes_nothing(make_session, kit, session, param) -> None:
    h = make_session()
    before = h.stream[0]["session"]
    error = kit.error_of(update(h, session, event_id="bad_1"))
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"
    assert error["param"] == param and error["event_id"] == "bad_1"
    assert kit.one(update(h, {}), "session.updated")["session"] == before


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"foo": 1}, "session.foo"),
        ({"audio": {"input": {"bogus": True}}}, "session.audio.input.bogus"),
        ({"temperature": 0.7}, "session.temperature"),  # beta only
    ],
)
def test_unknown_field_is_unknown_parameter(make_session, kit, session, param) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"type": "realtime", **session}, event_id="u1"))
    assert error["code"] == "unknown_parameter" and error["param"] == param
    assert error["event_id"] == "u1"


def test_missing_required_field(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"tools": [{"type": "mcp"}]}))
    assert error["code"] == "missing_required_parameter"
    assert error["param"] == "session.tools[0].server_label"


def test_session_must_be_an_object(make_session, kit) -> None:
    h = make_session()
    assert kit.error_of(update(h, "audio"))["param"] == "session"


def test_transcription_session_refuses_type_realtime(make_session, kit) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION)
    assert kit.error_of(update(h, {"type": "realtime"}))["param"] == "session.type"
    events = update(
        h,
        {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        },
    )
    session = kit.one(events, "session.updated")["session"]
    assert session["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"


def test_read_only_fields_sent_back_are_ignored(make_session, kit) -> None:
    h = make_session()
    before = h.stream[0]["session"]
    assert kit.one(update(h, dict(before)), "session.updated")["session"] == before


# -- beta session.update ---------------------------------------------------------------


def test_beta_flat_update_maps_to_ga(make_session, kit) -> None:
    h = make_session(beta=True)
    events = update(
        h,
        {
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_alaw",
            "turn_detection": None,
            "temperature": 0.7,
            "modalities": ["text"],
            "voice": "verse",
            "max_response_output_tokens": 300,
            "input_audio_transcription": {"model": "whisper-1"},
        },
    )
    session = kit.one(events, "session.updated")["session"]
    assert session["input_audio_format"] == "g711_ulaw"
    assert session["output_audio_format"] == "g711_alaw"
    assert session["turn_detection"] is None and session["temperature"] == 0.7
    assert session["modalities"] == ["text"] and session["voice"] == "verse"
    assert session["max_response_output_tokens"] == 300
    assert session["input_audio_transcription"]["model"] == "whisper-1"
    config = session_wire(h.session.config)
    assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert config["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert config["audio"]["input"]["turn_detection"] is None
    assert config["output_modalities"] == ["text"] and config["max_output_tokens"] == 300
    assert "temperature" not in config


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"temperature": 2.0}, "session.temperature"),
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        ({"input_audio_format": ["pcm16"]}, "session.input_audio_format"),
        ({"output_audio_format": 5}, "session.output_audio_format"),
    ],
)
def test_beta_invalid_update(make_session, kit, session, param) -> None:
    h = make_session(beta=True)
    error = kit.error_of(update(h, session, event_id="b1"))
    assert error["param"] == param and error["event_id"] == "b1"
    assert h.session.input_format == "audio/pcm"


def test_beta_transcription_session_update(make_session, kit) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION, beta=True)
    events = h.send(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_alaw",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": None,
                "include": ["item.input_audio_transcription.logprobs"],
            },
        }
    )
    assert kit.types(events) == ["transcription_session.updated"]
    session = events[0]["session"]
    assert session["input_audio_format"] == "g711_alaw" and session["turn_detection"] is None
    assert session["input_audio_transcription"]["model"] == "gpt-4o-transcribe"
    assert session["input_audio_transcription"]["language"] == "en"
    assert session["include"] == ["item.input_audio_transcription.logprobs"]


def test_transcription_session_update_is_beta_only(make_session, kit) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION)
    error = kit.error_of(h.send({"type": "transcription_session.update", "session": {}}))
    assert error["param"] == "type"


def test_beta_realtime_session_refuses_transcription_update(make_session, kit) -> None:
    h = make_session(beta=True)
    error = kit.error_of(h.send({"type": "transcription_session.update", "session": {}}))
    assert error["param"] == "session.type"


@pytest.mark.parametrize("beta", [False, True])
def test_custom_voice_object(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    session = (
        {"voice": {"id": "voice_1234"}}
        if beta
        else {"audio": {"output": {"voice": {"id": "voice_1234"}}}}
    )
    updated = kit.one(update(h, session), "session.updated")["session"]
    if beta:
        assert updated["voice"] == "voice_1234"  # the beta session has string voices only
    else:
        assert updated["audio"]["output"]["voice"] == {"id": "voice_1234"}
    response = kit.one(h.send({"type": "response.create"}), "response.created")["response"]
    voice = response["voice"] if beta else response["audio"]["output"]["voice"]
    assert voice == "voice_1234"  # the response object has string voices only


@pytest.mark.parametrize("voice", [{}, {"id": 5}, {"id": "v", "x": 1}, 5])
def test_invalid_voice(make_session, kit, voice) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"audio": {"output": {"voice": voice}}}))
    assert error["param"].startswith("session.audio.output.voice")


@pytest.mark.parametrize("direction", ["input", "output"])
def test_webrtc_sessions_keep_pcm(make_session, kit, direction) -> None:
    """On a media track the audio is Opus; the session's format stays audio/pcm."""
    h = make_session(media=True)
    update = {
        "type": "session.update",
        "event_id": "u",
        "session": {"type": "realtime", "audio": {direction: {"format": {"type": "audio/pcmu"}}}},
    }
    error = kit.error_of(h.send(update))
    assert error["param"] == f"session.audio.{direction}.format" and error["event_id"] == "u"
    assert session_wire(h.session.config)["audio"][direction]["format"]["type"] == "audio/pcm"


def test_webrtc_sessions_ignore_a_format_from_the_offer(make_session) -> None:
    overrides = {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcma"}}}}
    h = make_session(media=True, session_overrides=overrides)
    assert h.session.config.audio.output.format == AudioFormat(type=AudioFormatType.PCM)
    assert h.session.config.audio.output.format.rate == 24000
    plain = make_session(session_overrides=overrides).session.config
    assert plain.audio.output.format == AudioFormat(type=AudioFormatType.PCMA)
