"""The input audio buffer and input transcription."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from transceiver.protocol import SessionKind
from transceiver.protocol.effects import FeedVad, ResetVad, StartResponse, Transcribe

PTT = {"audio": {"input": {"turn_detection": None}}}
PCMU_PTT = {"audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}}}
WHISPER = {"audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}}}


def commit(h: Any, **extra: Any) -> list[dict[str, Any]]:
    return list(h.send({"type": "input_audio_buffer.commit", **extra}))


@pytest.mark.parametrize("audio", ["not base64!!", "QUJ", "QQ", 123, None, ["QUJD"], "é"])
def test_append_with_bad_audio_is_an_error(make_session, kit, audio) -> None:
    h = make_session(session_overrides=PTT)
    error = kit.error_of(
        h.send({"type": "input_audio_buffer.append", "audio": audio, "event_id": "a1"})
    )
    assert error["param"] == "audio" and error["event_id"] == "a1"
    assert error["code"] == "invalid_value"
    assert kit.error_of(commit(h))["code"] == "input_audio_buffer_commit_empty"


def test_append_without_audio_is_an_error(make_session, kit) -> None:
    h = make_session()
    assert kit.error_of(h.send({"type": "input_audio_buffer.append"}))["param"] == "audio"


@pytest.mark.parametrize("buffered_ms", [0, 50, 99])
def test_commit_below_100_ms_is_commit_empty(make_session, kit, buffered_ms) -> None:
    h = make_session(session_overrides=PTT)
    if buffered_ms:
        h.append_ms(buffered_ms)
    error = kit.error_of(commit(h, event_id="c_1"))
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "input_audio_buffer_commit_empty"
    assert error["event_id"] == "c_1" and error["param"] is None
    assert error["message"] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
        f"audio, but buffer only has {buffered_ms:.2f}ms of audio."
    )
    assert not any(isinstance(e, Transcribe) for e in h.effects())


def test_commit_adds_a_user_audio_item_and_no_response(make_session, kit) -> None:
    h = make_session(session_overrides=PTT)
    audio = h.append_ms(100)
    events = commit(h, event_id="c_2")
    assert kit.types(events) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    committed, added, done = events
    item_id = committed["item_id"]
    assert item_id.startswith("item_") and committed["previous_item_id"] is None
    assert added["previous_item_id"] is None and done["previous_item_id"] is None
    expected = {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
    assert added["item"] == expected and done["item"] == expected
    assert not any(isinstance(e, StartResponse | Transcribe) for e in h.effects())
    retrieved = h.retrieve(item_id)
    assert base64.b64decode(retrieved["content"][0]["audio"]) == audio


def test_previous_item_id_chains_commits(make_session, kit) -> None:
    h = make_session(session_overrides=PTT)
    ids: list[str] = []
    for _ in range(3):
        h.append_ms(120)
        events = commit(h)
        assert events[0]["previous_item_id"] == (ids[-1] if ids else None)
        assert events[1]["previous_item_id"] == events[0]["previous_item_id"]
        ids.append(events[0]["item_id"])
    assert len(set(ids)) == 3


def test_100_ms_is_counted_since_the_last_commit(make_session, kit) -> None:
    h = make_session(session_overrides=PTT)
    h.append_ms(150)
    commit(h)
    h.append_ms(60)
    assert kit.error_of(commit(h))["message"].endswith("only has 60.00ms of audio.")
    h.append_ms(40)
    assert kit.types(commit(h))[0] == "input_audio_buffer.committed"


def test_beta_commit_emits_conversation_item_created(make_session, kit) -> None:
    h = make_session(beta=True, session_overrides=PTT)
    h.append_ms(100)
    events = commit(h)
    assert kit.types(events) == ["input_audio_buffer.committed", "conversation.item.created"]
    item = events[1]["item"]
    assert item["object"] == "realtime.item" and item["id"] == events[0]["item_id"]
    assert item["content"] == [{"type": "input_audio", "transcript": None}]


def test_clear_empties_the_buffer(make_session, kit) -> None:
    h = make_session(session_overrides=PTT)
    h.append_ms(500)
    h.effects()
    assert kit.types(h.send({"type": "input_audio_buffer.clear", "event_id": "x"})) == [
        "input_audio_buffer.cleared"
    ]
    assert any(isinstance(e, ResetVad) for e in h.effects())
    assert kit.error_of(commit(h))["code"] == "input_audio_buffer_commit_empty"
    assert kit.types(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_g711_input_is_8_bytes_per_ms(make_session, kit, fmt) -> None:
    overrides = {"audio": {"input": {"turn_detection": None, "format": {"type": fmt}}}}
    h = make_session(session_overrides=overrides)
    h.send({"type": "input_audio_buffer.append", "audio": kit.b64(b"\x7f" * 799)})
    assert kit.error_of(commit(h))["message"].endswith("only has 99.88ms of audio.")
    h.send({"type": "input_audio_buffer.append", "audio": kit.b64(b"\x7f")})
    events = commit(h)
    assert kit.types(events)[0] == "input_audio_buffer.committed"
    audio = base64.b64decode(h.retrieve(events[0]["item_id"])["content"][0]["audio"])
    assert audio == b"\x7f" * 800


def test_beta_g711_ulaw_session_commits_800_bytes(make_session, kit) -> None:
    h = make_session(beta=True)
    h.send(
        {
            "type": "session.update",
            "session": {"input_audio_format": "g711_ulaw", "turn_detection": None},
        }
    )
    h.send({"type": "input_audio_buffer.append", "audio": kit.b64(b"\xff" * 800)})
    assert kit.types(commit(h))[0] == "input_audio_buffer.committed"


def test_append_feeds_the_vad_with_session_audio_time(make_session, kit) -> None:
    h = make_session()
    h.append_ms(100, byte=1)
    h.append_ms(40, byte=2)
    feeds = [e for e in h.effects() if isinstance(e, FeedVad)]
    assert [(f.start_ms, len(f.audio), f.audio_format) for f in feeds] == [
        (0.0, 4800, "audio/pcm"),
        (100.0, 1920, "audio/pcm"),
    ]
    assert feeds[0].turn_detection.type == "server_vad"


def test_no_vad_feed_without_turn_detection(make_session) -> None:
    h = make_session(session_overrides=PTT)
    h.append_ms(100)
    assert h.effects() == []


def test_input_audio_beyond_the_idle_window_is_dropped_while_nobody_speaks(make_session) -> None:
    h = make_session()
    for _ in range(25):
        h.append_ms(1000)
    h.session.vad_speech_started(24_500, 0)
    h.session.vad_speech_stopped(24_900, 0)
    events = h.drain()
    audio = base64.b64decode(h.retrieve(events[1]["item_id"])["content"][0]["audio"])
    assert len(audio) == 500 * 48  # from speech start to the end of the buffer


# -- input transcription ---------------------------------------------------------------


def test_commit_with_transcription_emits_a_transcribe_effect(make_session, kit) -> None:
    h = make_session(session_overrides=WHISPER)
    audio = h.append_ms(200)
    item_id = commit(h)[0]["item_id"]
    (effect,) = [e for e in h.effects() if isinstance(e, Transcribe)]
    assert effect.item_id == item_id and effect.audio == audio
    assert effect.audio_format == "audio/pcm" and effect.config.model == "whisper-1"
    h.session.transcription_delta(item_id, "Hello")
    h.session.transcription_delta(item_id, " world")
    usage = {"type": "duration", "seconds": 0.2}
    h.session.transcription_completed(item_id, "Hello world", usage, language="en")
    events = h.drain()
    assert kit.types(events) == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert [e["delta"] for e in events[:2]] == ["Hello", " world"]
    completed = events[2]
    assert completed["item_id"] == item_id and completed["content_index"] == 0
    assert completed["transcript"] == "Hello world" and completed["usage"] == usage
    assert completed["languages"] == [{"code": "en"}]
    assert h.retrieve(item_id)["content"][0]["transcript"] == "Hello world"
    h.session.transcription_delta(item_id, "late")  # after completion: dropped
    h.session.transcription_completed(item_id, "again", usage)
    assert h.drain() == []


def test_transcription_token_usage_and_beta_names(make_session, kit) -> None:
    h = make_session(beta=True, session_overrides=WHISPER)
    h.append_ms(100)
    item_id = commit(h)[0]["item_id"]
    usage = {
        "type": "tokens",
        "input_tokens": 10,
        "output_tokens": 3,
        "total_tokens": 13,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
    }
    h.session.transcription_completed(item_id, "hi", usage, language="en")
    completed = kit.one(h.drain(), "conversation.item.input_audio_transcription.completed")
    assert completed["usage"] == usage and "languages" not in completed


def test_transcription_failed(make_session, kit) -> None:
    h = make_session(session_overrides=WHISPER)
    h.append_ms(100)
    item_id = commit(h)[0]["item_id"]
    h.session.transcription_failed(item_id, "The audio could not be transcribed.")
    failed = kit.one(h.drain(), "conversation.item.input_audio_transcription.failed")
    assert failed["item_id"] == item_id and failed["content_index"] == 0
    assert failed["error"]["type"] == "transcription_error"
    assert failed["error"]["code"] == "audio_unintelligible"
    h.session.transcription_completed(item_id, "too late", {"type": "duration", "seconds": 1})
    assert h.drain() == []


def test_transcription_output_for_unknown_items_is_dropped(make_session) -> None:
    h = make_session(session_overrides=WHISPER)
    h.session.transcription_delta("item_nope", "x")
    h.session.transcription_completed("item_nope", "x", {"type": "duration", "seconds": 1})
    h.session.transcription_failed("item_nope", "x")
    assert h.drain() == []


def test_no_transcribe_effect_without_transcription(make_session) -> None:
    h = make_session(session_overrides=PTT)
    h.append_ms(100)
    commit(h)
    assert not any(isinstance(e, Transcribe) for e in h.effects())


@pytest.mark.parametrize("beta", [False, True])
def test_transcription_session_transcribes_every_commit(make_session, kit, beta) -> None:
    h = make_session(kind=SessionKind.TRANSCRIPTION, beta=beta)
    h.append_ms(300)
    h.session.vad_speech_started(0, 0)
    h.session.vad_speech_stopped(300, 0)
    events = h.drain()
    item_kind = "conversation.item.created" if beta else "conversation.item.added"
    assert kit.types(events)[:4] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        item_kind,
    ]
    assert not any(e["type"].startswith("response.") for e in events)
    effects = h.effects()
    assert not any(isinstance(e, StartResponse) for e in effects)
    (transcribe,) = [e for e in effects if isinstance(e, Transcribe)]
    h.session.transcription_completed(transcribe.item_id, "", {"type": "duration", "seconds": 0})
    assert (
        kit.one(h.drain(), "conversation.item.input_audio_transcription.completed")["transcript"]
        == ""
    )


def test_changing_the_input_format_drops_audio_in_the_old_format(make_session) -> None:
    h = make_session(session_overrides={"audio": {"input": {"turn_detection": None}}})
    h.append_ms(300)
    h.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        }
    )
    events = h.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"]["code"] == "input_audio_buffer_commit_empty"
