"""Session and response fields that do what they say or are refused (issue 15, part A):
null as "not given", tool_choice, truncation, prompt, idle_timeout_ms after playback,
and the beta temperature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transceiver.prompts import PromptLibrary, PromptLibraryError
from transceiver.protocol.config import DEFAULT_INSTRUCTIONS

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def update(h: Any, session: Any, **extra: Any) -> list[dict[str, Any]]:
    return list(h.send({"type": "session.update", "session": session, **extra}))


# -- explicit null: not given ------------------------------------------------------


def test_null_session_fields_are_not_given(make_session, kit) -> None:
    h = make_session()
    update(h, {"instructions": "Be brief.", "tools": [WEATHER], "max_output_tokens": 50})
    nulls = {
        "type": None,
        "model": None,
        "instructions": None,
        "tools": None,
        "tool_choice": None,
        "output_modalities": None,
        "max_output_tokens": None,
        "truncation": None,
        "audio": {"output": {"voice": None, "speed": None, "format": None}, "input": None},
    }
    session = kit.one(update(h, nulls), "session.updated")["session"]
    assert session["instructions"] == "Be brief." and session["tools"][0]["name"] == "get_weather"
    assert session["max_output_tokens"] == 50 and session["output_modalities"] == ["audio"]
    assert session["audio"]["output"]["voice"] == "alloy" and session["truncation"] == "auto"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_null_still_turns_things_off_where_null_is_a_value(make_session, kit) -> None:
    h = make_session()
    events = update(h, {"audio": {"input": {"turn_detection": None}}})
    assert kit.one(events, "session.updated")["session"]["audio"]["input"]["turn_detection"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"instructions": None},
        {"tools": None, "tool_choice": None, "output_modalities": None},
        {"max_output_tokens": None, "conversation": None, "input": None},
        {"audio": None, "metadata": None, "prompt": None},
        {"audio": {"output": {"voice": None, "format": None}}},
    ],
)
def test_null_response_fields_take_the_session_values(make_session, kit, params) -> None:
    h = make_session()
    update(h, {"instructions": "Session words.", "max_output_tokens": 42})
    h.user_text("hi")
    events, start = h.create_response(**params)
    response = kit.one(events, "response.created")["response"]
    assert start.request.instructions == "Session words." and start.request.in_conversation
    assert response["max_output_tokens"] == 42 and response["audio"]["output"]["voice"] == "alloy"
    assert len(start.request.context) == 1


# -- tool_choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice",
    ["none", "required", {"type": "function", "name": "get_weather"}],
)
def test_tool_choice_is_echoed_and_reaches_the_backend(make_session, kit, choice) -> None:
    h = make_session()
    session = kit.one(update(h, {"tools": [WEATHER], "tool_choice": choice}), "session.updated")
    assert session["session"]["tool_choice"] == choice
    _, start = h.create_response()
    assert start.request.tool_choice == choice


def test_mcp_tool_choice_names_an_mcp_server(make_session, kit) -> None:
    h = make_session()
    mcp = {"type": "mcp", "server_label": "wiki", "server_url": "https://example.com/mcp"}
    choice = {"type": "mcp", "server_label": "wiki", "name": "search"}
    session = kit.one(update(h, {"tools": [mcp], "tool_choice": choice}), "session.updated")
    assert session["session"]["tool_choice"] == choice


@pytest.mark.parametrize(
    ("session", "param", "code"),
    [
        ({"tool_choice": {"foo": 1}}, "session.tool_choice", "invalid_value"),
        ({"tool_choice": "sometimes"}, "session.tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "session.tool_choice.name", None),
        (
            {"tool_choice": {"type": "function", "name": "f", "x": 1}},
            "session.tool_choice.x",
            "unknown_parameter",
        ),
        (
            {"tool_choice": {"type": "mcp", "server_label": "x"}},
            "session.tool_choice.server_label",
            None,
        ),
    ],
)
def test_bad_tool_choice_is_refused_and_never_echoed(
    make_session, kit, session, param, code
) -> None:
    h = make_session()
    update(h, {"tools": [WEATHER]})
    error = kit.error_of(update(h, session, event_id="tc"))
    assert error["param"] == param and error["event_id"] == "tc"
    assert error["code"] == (code or "invalid_value")
    assert kit.one(update(h, {}), "session.updated")["session"]["tool_choice"] == "auto"


def test_removing_the_forced_tool_is_refused(make_session, kit) -> None:
    h = make_session()
    update(h, {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}})
    error = kit.error_of(update(h, {"tools": []}))
    assert error["param"] == "session.tool_choice.name"


def test_response_tool_choice_overrides_the_session(make_session, kit) -> None:
    h = make_session()
    update(h, {"tools": [WEATHER]})
    _, start = h.create_response(tool_choice={"type": "function", "name": "get_weather"})
    assert start.request.tool_choice == {"type": "function", "name": "get_weather"}
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    other = {**WEATHER, "name": "get_time"}
    _, start = h.create_response(tools=[other], tool_choice="required")
    assert start.request.tool_choice == "required"
    assert [t["name"] for t in start.request.tools] == ["get_time"]


# -- truncation --------------------------------------------------------------------


def test_truncation_reaches_the_backend(make_session, kit) -> None:
    h = make_session()
    ratio = {"type": "retention_ratio", "retention_ratio": 0.5}
    for value in ("disabled", {**ratio, "token_limits": {"post_instructions": 1000}}):
        session = kit.one(update(h, {"truncation": value}), "session.updated")["session"]
        shown = session["truncation"]
        assert shown == value or shown == {**ratio, "token_limits": {"post_instructions": 1000}}
        _, start = h.create_response()
        assert start.request.truncation == shown
        h.session.response_finished(start.request.response_id, 0)
        h.drain()


@pytest.mark.parametrize(
    ("truncation", "param"),
    [
        ("sometimes", "session.truncation"),
        ({"type": "retention_ratio", "retention_ratio": 1.5}, "session.truncation.retention_ratio"),
        ({"type": "retention_ratio"}, "session.truncation.retention_ratio"),
        (
            {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post": 1}},
            "session.truncation.token_limits.post",
        ),
    ],
)
def test_bad_truncation_is_refused(make_session, kit, truncation, param) -> None:
    h = make_session()
    assert kit.error_of(update(h, {"truncation": truncation}))["param"] == param


# -- prompt ------------------------------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> PromptLibrary:
    (tmp_path / "greeter.md").write_text("You greet {{ name }} from {{city}}.\n")
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "1.md").write_text("Version one.")
    (tmp_path / "support" / "2.md").write_text("Version two for {{product}}.")
    (tmp_path / "support" / "10.md").write_text("Version ten.")
    (tmp_path / "notes.bin").write_text("ignored")
    return PromptLibrary.load(str(tmp_path))


def test_prompt_library_files(library: PromptLibrary) -> None:
    assert library.ids() == ["greeter", "support"]


def test_a_prompt_resolves_into_the_instructions(make_session, kit, library) -> None:
    h = make_session(prompts=library)
    prompt = {"id": "greeter", "variables": {"name": "Ada", "city": "Paris"}}
    session = kit.one(update(h, {"prompt": prompt}), "session.updated")["session"]
    assert session["prompt"]["id"] == "greeter"
    _, start = h.create_response()
    assert start.request.instructions == "You greet Ada from Paris."
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    # Instructions the client set come after the prompt; a response's prompt wins.
    update(h, {"instructions": "Speak French."})
    text = {"type": "input_text", "text": "shoes"}
    _, start = h.create_response(
        prompt={"id": "support", "version": "2", "variables": {"product": text}}
    )
    assert start.request.instructions == "Version two for shoes.\n\nSpeak French."


def test_without_a_version_the_highest_one(make_session, library) -> None:
    h = make_session(prompts=library)
    update(h, {"instructions": DEFAULT_INSTRUCTIONS})
    _, start = h.create_response(prompt={"id": "support"})
    assert start.request.instructions == "Version ten."


@pytest.mark.parametrize(
    ("prompt", "param", "words"),
    [
        ({"id": "nope"}, "session.prompt.id", "No prompt"),
        ({"id": "support", "version": "3"}, "session.prompt.version", "no such version"),
        ({"id": "greeter", "variables": {"name": "Ada"}}, "session.prompt.variables", "'city'"),
        (
            {"id": "support", "version": "1", "variables": {"x": "y"}},
            "session.prompt.variables",
            "unused 'x'",
        ),
        ({"id": "greeter", "variables": {"name": 5}}, "session.prompt.variables.name", ""),
        ({"version": "1"}, "session.prompt.id", ""),
    ],
)
def test_a_prompt_that_does_not_resolve_is_refused(
    make_session, kit, library, prompt, param, words
) -> None:
    h = make_session(prompts=library)
    error = kit.error_of(update(h, {"prompt": prompt}))
    assert error["param"] == param and words in error["message"]
    assert error["code"] in ("invalid_value", "missing_required_parameter")
    assert kit.one(update(h, {}), "session.updated")["session"]["prompt"] is None


def test_without_a_library_a_prompt_is_refused(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"prompt": {"id": "greeter"}}))
    assert error["param"] == "session.prompt" and "--prompts" in error["message"]


def test_a_start_configuration_with_a_bad_prompt_is_refused(library) -> None:
    from tests.protocol.conftest import Harness
    from transceiver.protocol.errors import ClientError

    with pytest.raises(ClientError):
        Harness(prompts=library, session_overrides={"prompt": {"id": "nope"}})


def test_a_library_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PromptLibraryError):
        PromptLibrary.load(str(tmp_path / "missing"))


# -- idle_timeout_ms: from the end of playback ---------------------------------------


def test_idle_timeout_counts_from_the_end_of_the_reply_audio(make_session, kit) -> None:
    turn = {"type": "server_vad", "idle_timeout_ms": 5000}
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": turn}}})
    rid = h.start()
    h.session.response_audio_delta(rid, b"\0" * 24_000 * 2 * 3)  # 3 s of audio/pcm
    h.session.response_finished(rid, 1000)
    h.drain()
    # response.done at 1 s, plus 3 s of playback, plus the 5 s timeout.
    assert h.session.next_deadline_ms() == 9000
    h.session.tick(8999)
    assert h.drain() == []
    h.session.tick(9000)
    assert kit.types(h.drain())[0] == "input_audio_buffer.timeout_triggered"


def test_on_a_media_track_idle_timeout_counts_from_the_relays_playback(make_session) -> None:
    """WebRTC: the relay plays audio as it arrives, after what is queued (the playback
    clock); a reply streamed in real time has finished playing soon after response.done."""
    turn = {"type": "server_vad", "idle_timeout_ms": 5000}
    overrides = {"audio": {"input": {"turn_detection": turn}}}
    h = make_session(media=True, session_overrides=overrides)
    rid = h.start()
    second = b"\0" * 24_000 * 2
    for at_ms in (0, 1000, 2000):  # three 1 s chunks, one a second: real time
        h.session.response_audio_delta(rid, second, now_ms=at_ms)
    h.session.response_finished(rid, 2100)
    h.drain()
    assert h.session.next_deadline_ms() == 3000 + 5000  # played until 3 s
    rid = h.start()
    for _ in range(3):  # three seconds at once: queued, played one after another
        h.session.response_audio_delta(rid, second, now_ms=10_000)
    h.session.response_finished(rid, 10_100)
    h.drain()
    assert h.session.next_deadline_ms() == 13_000 + 5000


def test_idle_timeout_after_a_cancelled_reply_counts_from_the_cancel(make_session, kit) -> None:
    turn = {"type": "server_vad", "idle_timeout_ms": 5000}
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": turn}}})
    rid = h.start()
    h.session.response_audio_delta(rid, b"\0" * 24_000 * 2 * 3)
    h.send({"type": "response.cancel"}, now_ms=1000)
    assert h.session.next_deadline_ms() == 6000


# -- beta temperature ------------------------------------------------------------------


def test_beta_temperature_reaches_the_backend(make_session, kit) -> None:
    h = make_session(beta=True)
    _, start = h.create_response()
    assert start.request.temperature is None  # not set: the LLM's own
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    update(h, {"temperature": 0.6})
    _, start = h.create_response()
    assert start.request.temperature == 0.6
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    _, start = h.create_response(temperature=1.1)
    assert start.request.temperature == 1.1
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    _, start = h.create_response(temperature=None)
    assert start.request.temperature == 0.6


@pytest.mark.parametrize("where", ["session", "response"])
def test_beta_temperature_out_of_range_is_refused(make_session, kit, where) -> None:
    h = make_session(beta=True)
    if where == "session":
        error = kit.error_of(update(h, {"temperature": 2.0}))
    else:
        error = kit.error_of(h.send({"type": "response.create", "response": {"temperature": 0.1}}))
    assert error["param"] == f"{where}.temperature" and error["code"] == "invalid_value"


def test_a_resumed_sessions_unresolvable_prompt_is_an_error_not_a_crash() -> None:
    """The proxy's fallback resumes a session whose prompt only the upstream knew."""
    from tests.invariants import validate_with_sdk
    from transceiver.protocol import RealtimeSession
    from transceiver.protocol.config import apply_session_update, default_config
    from transceiver.protocol.contract import SessionKind, SessionSpec

    config = apply_session_update(
        default_config(SessionKind.REALTIME, None), {"prompt": {"id": "upstream_only"}}
    )
    session = RealtimeSession.resume(SessionSpec(), config)
    session.append_audio(b"\0" * 48 * 300)
    session.vad_speech_started(0, 0)
    session.vad_speech_stopped(300, 300)
    events = session.events_to_send()
    for event in events:
        validate_with_sdk(event, beta=False)
    assert events[-1]["type"] == "error" and "--prompts" in events[-1]["error"]["message"]
    assert session.active_response_ids() == []


def test_beta_tool_choice_is_a_function_name(make_session, kit) -> None:
    """The beta session's tool_choice is a string: a mode, or the function's name."""
    h = make_session(beta=True)
    session = kit.one(
        update(h, {"tools": [WEATHER], "tool_choice": "get_weather"}), "session.updated"
    )
    assert session["session"]["tool_choice"] == "get_weather"
    _, start = h.create_response()
    assert start.request.tool_choice == {"type": "function", "name": "get_weather"}
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    _, start = h.create_response(tool_choice="none")
    assert start.request.tool_choice == "none"
    h.session.response_finished(start.request.response_id, 0)
    h.drain()
    assert (
        kit.error_of(update(h, {"tool_choice": "get_time"}))["param"] == "session.tool_choice.name"
    )


# -- reasoning: validated, and refused where it would have no effect ---------------------


def test_a_bad_reasoning_effort_is_refused_not_echoed(make_session, kit) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"reasoning": {"effort": "bogus"}}))
    assert error["param"] == "session.reasoning.effort" and error["code"] == "invalid_value"


@pytest.mark.parametrize("where", ["session", "response"])
def test_a_reasoning_effort_fails_the_response_saying_why(make_session, kit, where) -> None:
    h = make_session()
    if where == "session":
        session = kit.one(update(h, {"reasoning": {"effort": "low"}}), "session.updated")
        assert session["session"]["reasoning"] == {"effort": "low"}
        params: dict[str, Any] = {}
    else:
        params = {"reasoning": {"effort": "high"}}
    h.user_text("hi")
    error = kit.error_of(h.send({"type": "response.create", "response": params}))
    assert "do not reason" in error["message"] and error["code"] == "invalid_value"
    assert error["param"] == (
        "session.reasoning" if where == "session" else "response.reasoning.effort"
    )
    update(h, {"reasoning": None})
    events, _ = h.create_response()  # without it, responses go on
    kit.one(events, "response.created")


# -- tracing: validated like OpenAI's configuration (its names go on the turn log lines) --


@pytest.mark.parametrize(
    "tracing",
    ["auto", {"workflow_name": "checkout", "group_id": "g-1", "metadata": {"shop": 7}}, None],
)
def test_tracing_is_kept_and_echoed(make_session, kit, tracing) -> None:
    h = make_session()
    session = kit.one(update(h, {"tracing": tracing}), "session.updated")["session"]
    echoed = session["tracing"]
    assert echoed == (tracing if not isinstance(tracing, dict) else {**tracing})


@pytest.mark.parametrize("tracing", ["on", {"workflow": "x"}, {"group_id": 5}])
def test_a_malformed_tracing_is_refused(make_session, kit, tracing) -> None:
    h = make_session()
    error = kit.error_of(update(h, {"tracing": tracing}))
    assert error["param"].startswith("session.tracing") and error["code"] == "invalid_value"


def test_a_transcription_delay_is_refused_saying_why(make_session, kit) -> None:
    h = make_session()
    transcription = {"model": "whisper-1", "delay": "low"}
    error = kit.error_of(update(h, {"audio": {"input": {"transcription": transcription}}}))
    assert error["param"] == "session.audio.input.transcription.delay"
    assert error["code"] == "invalid_value" and "committed" in error["message"]
    transcription["delay"] = None  # null: not given
    kit.one(update(h, {"audio": {"input": {"transcription": transcription}}}), "session.updated")


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_a_noise_reduction_strength_outside_0_1_is_refused(make_session, kit, strength) -> None:
    h = make_session()
    nr = {"type": "near_field", "strength": strength}
    error = kit.error_of(update(h, {"audio": {"input": {"noise_reduction": nr}}}))
    assert error["param"] == "session.audio.input.noise_reduction.strength"
    assert error["code"] == "invalid_value"


# -- the voice is fixed once the assistant has spoken ----------------------------------


def test_the_voice_can_change_until_the_assistant_speaks(make_session, kit) -> None:
    h = make_session()
    voice = {"audio": {"output": {"voice": "marin"}}}
    kit.one(update(h, voice), "session.updated")
    h.user_text("hi")
    _, start = h.create_response()
    h.session.response_audio_delta(start.request.response_id, b"\0" * 4800)
    h.drain()
    error = kit.error_of(update(h, {"audio": {"output": {"voice": "cedar"}}}))
    assert error["code"] == "cannot_update_voice"
    assert error["param"] == "session.audio.output.voice"
    # The same voice, or another field, still updates.
    kit.one(update(h, {"instructions": "Be brief.", **voice}), "session.updated")
