"""What a client can make the core hold of input audio: one append or one created item
carries at most 15 MiB of base64 text; the input buffer and one item hold at most
``max_input_audio_ms`` (15 minutes by default). Past either, an ``error`` event, and the
session goes on. And a closed session is freed without a garbage-collection cycle."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from transceiver.protocol import RealtimeSession
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.contract import Dialect, SessionSpec
from transceiver.protocol.input_audio import APPEND_MAX_CHARS, INPUT_AUDIO_MAX_MS

PTT = {"audio": {"input": {"turn_detection": None}}}
PCMU_PTT = {"audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}}}
PCM_MS = AudioFormatType.PCM.bytes_per_ms


def append(h: Any, audio: bytes, event_id: str = "a1") -> list[dict[str, Any]]:
    event = {"type": "input_audio_buffer.append", "audio": h.kit.b64(audio)}
    return list(h.send({**event, "event_id": event_id}))


@pytest.fixture
def harness(make_session: Any, kit: Any) -> Callable[..., Any]:
    """``make_session`` with the helpers on each session as ``.kit``."""

    def make(**kwargs: Any) -> Any:
        h = make_session(**kwargs)
        h.kit = kit
        return h

    return make


@pytest.fixture
def session(harness: Callable[..., Any]) -> Any:
    """A push-to-talk session that holds at most one second of input audio."""
    return harness(session_overrides=PTT, max_input_audio_ms=1000)


def committed_ms(h: Any) -> float:
    events = h.send({"type": "input_audio_buffer.commit"})
    item_id = h.kit.one(events, "input_audio_buffer.committed")["item_id"]
    stored = h.session.conversation.get(item_id)
    return float(stored.audio_ms())


def test_an_append_past_the_buffer_bound_is_refused_and_the_session_goes_on(session) -> None:
    assert append(session, b"\1" * (600 * PCM_MS)) == []
    error = session.kit.error_of(append(session, b"\1" * (500 * PCM_MS), "a2"))
    assert (error["code"], error["param"], error["event_id"]) == (
        "input_audio_too_long",
        "audio",
        "a2",
    )
    assert "1000 ms" in error["message"] and "commit or clear" in error["message"]
    assert append(session, b"\1" * (400 * PCM_MS)) == []  # up to the bound exactly
    assert committed_ms(session) == 1000  # the refused append left nothing behind
    assert append(session, b"\1" * (900 * PCM_MS)) == []  # a commit makes room again
    session.send({"type": "input_audio_buffer.clear"})
    assert append(session, b"\1" * (1000 * PCM_MS)) == []  # and so does a clear


def test_the_default_bound_is_15_minutes(harness, kit) -> None:
    h = harness(session_overrides=PCMU_PTT)
    assert h.session.max_input_audio_ms == INPUT_AUDIO_MAX_MS == 15 * 60 * 1000
    fifteen_minutes = b"\xff" * (INPUT_AUDIO_MAX_MS * AudioFormatType.PCMU.bytes_per_ms)
    assert append(h, fifteen_minutes) == []
    assert kit.error_of(append(h, b"\xff" * 160))["code"] == "input_audio_too_long"
    assert committed_ms(h) == INPUT_AUDIO_MAX_MS


def test_with_turn_detection_idle_audio_streams_on_past_the_bound(harness) -> None:
    """Nobody speaking: the buffer keeps only its last seconds, so streaming goes on."""
    h = harness(max_input_audio_ms=30_000)
    for n in range(60):
        assert append(h, b"\0" * (1000 * PCM_MS), f"a{n}") == []
    assert h.session._input.duration_ms(AudioFormatType.PCM) <= 30_000


def test_while_the_user_speaks_the_bound_holds_with_turn_detection(harness, kit) -> None:
    h = harness(max_input_audio_ms=30_000)
    h.session.vad_speech_started(0, 0)
    h.drain()
    for n in range(30):
        assert append(h, b"\1" * (1000 * PCM_MS), f"a{n}") == []
    assert kit.error_of(append(h, b"\1" * (20 * PCM_MS)))["code"] == "input_audio_too_long"
    h.session.vad_speech_stopped(30_000, 0)
    assert kit.types(h.drain())[:2] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    assert append(h, b"\1" * (20 * PCM_MS)) == []


def test_an_append_over_15_mib_of_base64_is_refused_before_decoding(session) -> None:
    too_long = "AAAA" * (APPEND_MAX_CHARS // 4 + 1)
    event = {"type": "input_audio_buffer.append", "audio": too_long, "event_id": "big"}
    error = session.kit.error_of(session.send(event))
    assert (error["code"], error["param"], error["event_id"]) == ("audio_too_large", "audio", "big")
    assert "15 MiB" in error["message"] and str(APPEND_MAX_CHARS) in error["message"]
    assert append(session, b"\1" * (200 * PCM_MS)) == []
    assert committed_ms(session) == 200


def test_an_append_of_exactly_15_mib_of_base64_is_accepted(harness) -> None:
    h = harness(session_overrides=PTT)
    event = {"type": "input_audio_buffer.append", "audio": "AAAA" * (APPEND_MAX_CHARS // 4)}
    assert h.send(event) == []
    assert committed_ms(h) == APPEND_MAX_CHARS // 4 * 3 / PCM_MS  # 245.76 s


def audio_item(*parts: str, item_id: str = "item_a") -> dict[str, Any]:
    content = [{"type": "input_audio", "audio": audio} for audio in parts]
    item = {"id": item_id, "type": "message", "role": "user", "content": content}
    return {"type": "conversation.item.create", "item": item, "event_id": "c1"}


def test_a_created_item_over_15_mib_of_base64_is_refused(harness, kit) -> None:
    h = harness(session_overrides=PTT)
    half = "AAAA" * (APPEND_MAX_CHARS // 8 + 1)  # two of these are over 15 MiB
    error = kit.error_of(h.send(audio_item(half, half)))
    assert (error["code"], error["param"], error["event_id"]) == (
        "audio_too_large",
        "item.content[1].audio",
        "c1",
    )
    assert len(h.session.conversation) == 0
    events = h.send(audio_item(half))
    assert kit.types(events) == ["conversation.item.added", "conversation.item.done"]


def test_a_created_item_longer_than_the_bound_is_refused(session) -> None:
    b64 = session.kit.b64
    error = session.kit.error_of(session.send(audio_item(b64(b"\1" * (1001 * PCM_MS)))))
    assert (error["code"], error["param"]) == ("input_audio_too_long", "item.content")
    assert "One conversation item" in error["message"]
    assert len(session.session.conversation) == 0
    events = session.send(audio_item(b64(b"\1" * (1000 * PCM_MS))))
    assert session.kit.types(events) == ["conversation.item.added", "conversation.item.done"]


# -- a closed session is freed by reference counting alone ----------------------------


def exercise(session: RealtimeSession) -> None:
    """Every part of a session: items, the input buffer, a response with text, audio and a
    function call, a cancelled one, a truncation, transcription, then close."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    session.receive_client_event({"type": "conversation.item.create", "item": item}, 0)
    session.receive_client_event({"type": "input_audio_buffer.append", "audio": "AAAA" * 2400}, 0)
    session.receive_client_event({"type": "input_audio_buffer.commit"}, 0)
    session.receive_client_event({"type": "response.create"}, 0)
    (rid,) = session.active_response_ids()
    session.response_transcript_delta(rid, "hello there")
    session.response_audio_delta(rid, b"\0" * 4800)
    session.response_text_delta(rid, "text")
    session.response_function_call(rid, "lookup", "{}", None)
    session.response_finished(rid, 10)
    session.receive_client_event({"type": "response.create"}, 20)
    session.receive_client_event({"type": "response.cancel"}, 30)
    session.events_to_send()
    session.effects()
    session.close(40)


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
def test_a_closed_session_is_freed_without_a_gc_cycle(dialect: Dialect) -> None:
    gc.collect()
    gc.disable()  # only reference counting may free it
    try:
        session = RealtimeSession(SessionSpec(model="gpt-realtime", dialect=dialect))
        exercise(session)
        freed = weakref.ref(session)
        del session
        assert freed() is None, "a reference cycle keeps the closed session alive"
    finally:
        gc.enable()
