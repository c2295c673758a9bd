"""Turn detection, barge-in, idle timeout and session expiry."""

from __future__ import annotations

from typing import Any

import pytest

from transceiver.protocol.config import SemanticVad, ServerVad
from transceiver.protocol.effects import CancelResponse, Close, FeedVad, StartResponse

MINUTE_MS = 60_000


def vad(**fields: Any) -> dict[str, Any]:
    return {"audio": {"input": {"turn_detection": {"type": "server_vad", **fields}}}}


def speak(h: Any, start_ms: int = 200, end_ms: int = 900) -> list[dict[str, Any]]:
    h.session.vad_speech_started(start_ms, h.now_ms)
    events = list(h.drain())
    h.append_ms(end_ms - start_ms, byte=7)
    h.session.vad_speech_stopped(end_ms, h.now_ms)
    return events + list(h.drain())


@pytest.mark.parametrize("semantic", [False, True])
def test_voice_turn(make_session, kit, semantic) -> None:
    overrides = {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}
    h = make_session(session_overrides=overrides if semantic else None)
    h.append_ms(200, byte=0)
    h.session.vad_speech_started(200, 0)
    started = h.drain()
    assert kit.types(started) == ["input_audio_buffer.speech_started"]
    item_id = started[0]["item_id"]
    assert item_id.startswith("item_") and started[0]["audio_start_ms"] == 200
    h.append_ms(700, byte=7)
    h.session.vad_speech_stopped(900, 0)
    events = h.drain()
    assert kit.types(events) == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    stopped, committed, added, done, created = events
    assert stopped["item_id"] == committed["item_id"] == item_id
    assert added["item"]["id"] == done["item"]["id"] == item_id
    assert stopped["audio_end_ms"] == 900 and committed["previous_item_id"] is None
    assert created["response"]["status"] == "in_progress"
    (start,) = [e for e in h.effects() if isinstance(e, StartResponse)]
    (context,) = start.request.context
    assert context.item["id"] == item_id and context.audio == b"\x07" * (700 * 48)


def test_the_vad_gets_the_typed_turn_detection(make_session) -> None:
    h = make_session(session_overrides=vad(threshold=0.8, silence_duration_ms=300))
    h.append_ms(100)
    (feed,) = [e for e in h.effects() if isinstance(e, FeedVad)]
    assert feed.turn_detection == ServerVad(
        type="server_vad", threshold=0.8, silence_duration_ms=300
    )
    assert feed.turn_detection.prefix_padding_ms == 300


@pytest.mark.parametrize(
    ("eagerness", "max_wait_ms"), [("low", 8000), ("medium", 4000), ("high", 2000), ("auto", 4000)]
)
def test_semantic_vad_detects_speech_as_the_server_vad(eagerness, max_wait_ms) -> None:
    # The speech detector's parameters are the server VAD's; the silence that ends a turn
    # the end-of-turn model calls unfinished is the eagerness's max timeout.
    td = SemanticVad(type="semantic_vad", eagerness=eagerness)
    server = ServerVad(type="server_vad")
    assert (td.threshold, td.prefix_padding_ms) == (server.threshold, server.prefix_padding_ms)
    assert td.silence_duration_ms == max_wait_ms


def test_semantic_vad_runs_with_the_server_vad_defaults(make_session, kit) -> None:
    semantic = {"type": "semantic_vad", "eagerness": "low"}
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": semantic}}})
    h.append_ms(100)
    (feed,) = [e for e in h.effects() if isinstance(e, FeedVad)]
    td = feed.turn_detection
    assert isinstance(td, SemanticVad) and td.eagerness == "low"
    assert (td.threshold, td.prefix_padding_ms, td.silence_duration_ms) == (0.5, 300, 8000)
    assert td.idle_timeout_ms is None
    # Those parameters are no part of the semantic_vad object, nor can a client set them.
    events = h.send({"type": "session.update", "session": {"instructions": "x"}})
    shown = kit.one(events, "session.updated")["session"]["audio"]["input"]["turn_detection"]
    assert shown == {**semantic, "create_response": True, "interrupt_response": True}
    error = kit.error_of(
        h.send(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"turn_detection": {**semantic, "threshold": 1}}}},
            }
        )
    )
    assert error["code"] == "unknown_parameter"
    assert error["param"] == "session.audio.input.turn_detection.threshold"


def test_beta_voice_turn(make_session, kit) -> None:
    h = make_session(beta=True)
    assert kit.types(speak(h)) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
    ]


def test_create_response_false_commits_without_a_response(make_session, kit) -> None:
    h = make_session(session_overrides=vad(create_response=False))
    events = speak(h)
    assert kit.types(events)[-1] == "conversation.item.done"
    assert not any(isinstance(e, StartResponse) for e in h.effects())


def test_second_turn_chains_previous_item_id(make_session, kit) -> None:
    h = make_session(session_overrides=vad(create_response=False))
    first = speak(h)[1]["item_id"]
    second = speak(h, 1000, 1500)
    assert second[0]["item_id"] != first and second[2]["previous_item_id"] == first


@pytest.mark.parametrize("beta", [False, True])
def test_barge_in_cancels_the_response(make_session, kit, beta) -> None:
    h = make_session(beta=beta)
    speak(h)
    (start,) = [e for e in h.effects() if isinstance(e, StartResponse)]
    rid = start.request.response_id
    h.session.response_transcript_delta(rid, "Well, you see")
    h.session.response_audio_delta(rid, b"\x00\x00" * 4800)
    h.drain()
    h.session.vad_speech_started(1500, 0)
    events = h.drain()
    assert kit.types(events)[0] == "input_audio_buffer.speech_started"
    assert kit.types(events)[-1] == "response.done"
    response = events[-1]["response"]
    assert response["id"] == rid and response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert CancelResponse(rid, "turn_detected") in h.effects()
    assert h.session.response_audio_delta(rid, b"\x00\x00") is False
    h.append_ms(400)
    h.session.vad_speech_stopped(1900, 0)
    assert kit.types(h.drain())[-1] == "response.created"  # the new turn


def test_no_barge_in_with_interrupt_response_false(make_session, kit) -> None:
    h = make_session(session_overrides=vad(interrupt_response=False))
    speak(h)
    rid = next(e for e in h.effects() if isinstance(e, StartResponse)).request.response_id
    h.session.response_text_delta(rid, "still talking")
    h.drain()
    events = speak(h, 1000, 1400)
    assert "response.done" not in kit.types(events) and "error" not in kit.types(events)
    assert kit.types(events)[-1] == "conversation.item.done"  # committed, no new response
    assert h.session.active_response_ids() == [rid]
    assert not any(isinstance(e, CancelResponse | StartResponse) for e in h.effects())


def test_out_of_band_responses_survive_barge_in(make_session, kit) -> None:
    h = make_session()
    oob = h.start(conversation="none")
    h.session.vad_speech_started(0, 0)
    assert kit.types(h.drain()) == ["input_audio_buffer.speech_started"]
    assert h.session.active_response_ids() == [oob]


def test_clear_during_speech_resets_the_turn(make_session, kit) -> None:
    h = make_session()
    h.session.vad_speech_started(0, 0)
    h.drain()
    h.append_ms(300)
    h.send({"type": "input_audio_buffer.clear"})
    h.session.vad_speech_stopped(300, 0)  # the turn is gone
    assert h.drain() == []
    assert kit.types(speak(h, 400, 800))[0] == "input_audio_buffer.speech_started"


def test_vad_calls_are_ignored_without_turn_detection_or_out_of_order(make_session, kit) -> None:
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": None}}})
    h.session.vad_speech_started(0, 0)
    h.session.vad_speech_stopped(100, 0)
    assert h.drain() == []
    h = make_session()
    h.session.vad_speech_stopped(100, 0)
    assert h.drain() == []
    h.session.vad_speech_started(0, 0)
    h.session.vad_speech_started(50, 0)
    assert kit.types(h.drain()) == ["input_audio_buffer.speech_started"]


def test_speech_start_is_clamped_to_the_buffer(make_session, kit) -> None:
    h = make_session()
    h.append_ms(300)
    h.send({"type": "input_audio_buffer.clear"})
    h.session.vad_speech_started(100, 0)
    assert h.drain()[0]["audio_start_ms"] == 300


def test_manual_commit_during_speech_uses_the_speech_item(make_session, kit) -> None:
    h = make_session()
    h.session.vad_speech_started(0, 0)
    item_id = h.drain()[0]["item_id"]
    h.append_ms(200)
    assert h.send({"type": "input_audio_buffer.commit"})[0]["item_id"] == item_id
    h.session.vad_speech_stopped(200, 0)
    assert h.drain() == []


# -- idle timeout --------------------------------------------------------------------


def test_idle_timeout_commits_and_responds(make_session, kit) -> None:
    h = make_session(session_overrides=vad(idle_timeout_ms=5000))
    h.append_ms(1000, byte=0)
    assert h.session.next_deadline_ms() == 5000
    h.session.tick(4999)
    assert h.drain() == []
    h.session.tick(5000)
    events = h.drain()
    assert kit.types(events) == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    timeout = events[0]
    assert timeout["item_id"] == events[1]["item_id"]
    assert timeout["audio_start_ms"] == 0 and timeout["audio_end_ms"] == 1000
    rid = events[-1]["response"]["id"]
    h.session.tick(20_000)  # no idle timeout while a response runs
    assert h.drain() == []
    h.session.response_finished(rid, 21_000)
    h.drain()
    assert h.session.next_deadline_ms() == 26_000
    h.session.vad_speech_started(1000, 23_000)  # speech holds the timer off
    h.session.tick(40_000)
    assert kit.types(h.drain()) == ["input_audio_buffer.speech_started"]


def test_beta_idle_timeout_has_no_timeout_triggered(make_session, kit) -> None:
    h = make_session(beta=True, session_overrides=vad(idle_timeout_ms=5000))
    h.session.tick(5000)
    assert kit.types(h.drain())[:2] == ["input_audio_buffer.committed", "conversation.item.created"]


def test_no_idle_timeout_by_default(make_session) -> None:
    h = make_session()
    h.session.tick(59 * MINUTE_MS)
    assert h.drain() == [] and h.effects() == []


# -- expiry -----------------------------------------------------------------------


def test_session_expires_after_60_minutes(make_session, kit) -> None:
    transcription = {"model": "whisper-1"}
    h = make_session(
        now_ms=1000,
        media=True,
        session_overrides={
            "audio": {"input": {"turn_detection": None, "transcription": transcription}}
        },
    )
    h.append_ms(100)
    item_id = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    assert h.session.next_deadline_ms() == 1000 + 60 * MINUTE_MS
    h.session.tick(60 * MINUTE_MS + 999)
    assert h.drain() == []
    rid = h.start()
    h.effects()
    h.session.tick(60 * MINUTE_MS + 1000)
    events = h.drain()
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["id"] == rid and done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "session_expired"
    assert [e["type"] for e in events][-2:] == ["response.done", "error"]
    error = kit.error_of(events[-1:])
    assert error["code"] == "session_expired" and error["event_id"] is None
    assert "60 minutes" in error["message"]
    effects = h.effects()
    assert Close(1000, "session expired") in effects
    assert CancelResponse(rid, "session_expired") in effects
    assert h.session.closed
    # Nothing is emitted afterwards.
    h.send({"type": "response.create"})
    h.send("garbage")
    h.session.tick(61 * MINUTE_MS)
    h.session.vad_speech_started(0, 0)
    assert h.session.response_text_delta(rid, "late") is False
    h.session.transcription_delta(item_id, "late")
    h.session.transcription_completed(item_id, "late", {"type": "duration", "seconds": 1})
    h.session.transcription_failed(item_id, "late")
    assert h.drain() == [] and h.effects() == []


def test_close_is_idempotent(make_session) -> None:
    h = make_session()
    rid = h.start()
    h.effects()
    h.session.close(0)
    h.session.close(0)
    assert h.effects() == [CancelResponse(rid, "client_cancelled")]
    assert h.drain() == []
