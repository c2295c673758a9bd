"""The conversation a session keeps is bounded: a number of items, and audio in all (the
oldest items' audio is let go first; their transcripts and text stay)."""

from __future__ import annotations

import base64

import pytest

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.errors import ClientError


def audio_item(item_id: str, seconds: float) -> dict[str, object]:
    audio = base64.b64encode(b"\1\0" * int(24_000 * seconds)).decode()
    return {
        "type": "conversation.item.create",
        "item": {
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": audio, "transcript": f"t {item_id}"}],
        },
    }


def test_the_oldest_audio_is_let_go_past_the_budget(make_session, kit) -> None:
    h = make_session(max_conversation_audio_ms=5000)
    for n in range(4):
        h.send(audio_item(f"item_{n}", 2.0))
    held = {stored.item["id"]: stored.audio_ms() for stored in h.session.conversation.items()}
    assert held == {"item_0": 0.0, "item_1": 0.0, "item_2": 2000.0, "item_3": 2000.0}
    old = h.retrieve("item_0")
    assert "audio" not in old["content"][0] and old["content"][0]["transcript"] == "t item_0"
    assert "audio" in h.retrieve("item_3")["content"][0]
    h.send({"type": "conversation.item.delete", "item_id": "item_2"})
    h.send(audio_item("item_4", 3.0))  # the delete made room: nothing more is let go
    assert h.session.conversation.get("item_3").audio_ms() == 2000.0
    assert h.session.conversation.get("item_4").audio_ms() == 3000.0


def test_response_audio_counts_and_the_item_being_spoken_is_kept(make_session) -> None:
    h = make_session(max_conversation_audio_ms=3000)
    h.send(audio_item("item_in", 2.0))
    rid = h.start()
    for _ in range(40):  # 4 s of reply audio, in 100 ms deltas
        h.session.response_audio_delta(rid, b"\0" * 4800)
    h.drain()
    items = h.session.conversation.items()
    assert items[0].audio_ms() == 0.0  # the older input went first
    assert items[-1].audio_ms() == 4000.0  # the reply being spoken is never cut


def test_items_are_counted() -> None:
    conversation = Conversation("conv_1", max_items=3)
    for n in range(3):
        conversation.add({"id": f"item_{n}", "type": "message", "content": []})
    with pytest.raises(ClientError) as refused:  # the session answers with an error event
        conversation.add({"id": "item_3", "type": "message", "content": []})
    assert refused.value.code == "conversation_full"
    assert len(conversation) == 3


def test_a_full_conversation_is_an_error_event_and_the_session_goes_on(make_session, kit) -> None:
    h = make_session()
    h.session.conversation.max_items = 2
    h.user_text("one")
    h.user_text("two")
    error = kit.error_of(h.send(audio_item("item_x", 0.5)))
    assert error["code"] == "conversation_full"
    h.send(
        {
            "type": "conversation.item.delete",
            "item_id": h.session.conversation.items()[0].item["id"],
        }
    )
    assert h.send(audio_item("item_y", 0.5))[0]["type"] == "conversation.item.added"


def spoken_reply(h, seconds: float) -> str:
    """A finished response that spoke ``seconds`` of audio; its item's id."""
    rid = h.start()
    h.session.response_transcript_delta(rid, "Here you go.")
    for _ in range(int(seconds * 10)):
        h.session.response_audio_delta(rid, b"\0" * 4800)
    h.session.response_finished(rid, h.now_ms)
    events = h.drain()
    return str(next(e for e in events if e["type"] == "response.output_item.done")["item"]["id"])


def test_truncating_a_reply_whose_audio_was_let_go_is_an_error(make_session, kit) -> None:
    h = make_session(max_conversation_audio_ms=3000)
    reply = spoken_reply(h, 2.0)
    h.send(audio_item("item_in", 2.0))  # over the budget: the reply's audio goes
    assert h.session.conversation.get(reply).audio_ms() == 0.0
    part = h.retrieve(reply)["content"][0]
    assert "audio" not in part and part["transcript"] == "Here you go."
    truncate = {
        "type": "conversation.item.truncate",
        "item_id": reply,
        "content_index": 0,
        "audio_end_ms": 500,
    }
    error = kit.error_of(h.send(truncate))
    assert "no longer held" in error["message"] and error["param"] == "item_id"
    # The session goes on: another reply is spoken and can be truncated.
    newer = spoken_reply(h, 1.0)
    assert kit.types(h.send({**truncate, "item_id": newer})) == ["conversation.item.truncated"]


def test_a_reply_still_speaking_keeps_its_audio(make_session) -> None:
    h = make_session(max_conversation_audio_ms=3000)
    h.send(audio_item("item_old", 1.0))
    rid = h.start()
    for _ in range(20):  # 2 s of reply audio
        h.session.response_audio_delta(rid, b"\0" * 4800)
    h.drain()
    speaking = h.session.conversation.items()[-1]
    # The client adds 2 s more while the reply is spoken: the oldest audio goes, the reply's
    # stays, and what the reply speaks next is still counted and kept.
    h.send(audio_item("item_new", 2.0))
    assert h.session.conversation.get("item_old").audio_ms() == 0.0
    for _ in range(10):
        h.session.response_audio_delta(rid, b"\0" * 4800)
    h.drain()
    assert speaking.audio_ms() == 3000.0
    assert h.session.conversation.get("item_new").audio_ms() == 0.0  # after it: it went
    h.session.response_finished(rid, h.now_ms)
    h.drain()
    h.send(audio_item("item_last", 1.0))  # the reply is done: its audio can go now
    assert speaking.audio_ms() == 0.0
    assert h.session.conversation.get("item_last").audio_ms() == 1000.0


def test_a_reply_deleted_while_speaking_holds_nothing(make_session) -> None:
    h = make_session(max_conversation_audio_ms=3000)
    rid = h.start()
    h.session.response_audio_delta(rid, b"\0" * 4800)
    h.drain()
    speaking = h.session.conversation.items()[-1]
    h.send({"type": "conversation.item.delete", "item_id": speaking.item["id"]})
    for _ in range(40):
        h.session.response_audio_delta(rid, b"\0" * 4800)
    h.drain()
    assert len(speaking.audio) == 4800  # nothing kept past the delete
    h.send(audio_item("item_a", 2.5))  # the deleted reply does not count against the budget
    assert h.session.conversation.get("item_a").audio_ms() == 2500.0


def test_a_committed_buffer_is_kept_whole(make_session) -> None:
    h = make_session(
        max_conversation_audio_ms=3000,
        session_overrides={"audio": {"input": {"turn_detection": None}}},
    )
    h.send(audio_item("item_old", 2.0))
    h.append_ms(2500)
    events = h.send({"type": "input_audio_buffer.commit"})
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert h.session.conversation.get(committed["item_id"]).audio_ms() == 2500.0
    assert h.session.conversation.get("item_old").audio_ms() == 0.0


def full_session(make_session, **kwargs):
    h = make_session(**kwargs)
    h.session.conversation.max_items = 2
    h.user_text("one")
    h.user_text("two")
    return h


def test_a_full_conversation_refuses_a_response_in_it_but_not_one_out_of_it(
    make_session, kit
) -> None:
    h = full_session(make_session)
    error = kit.error_of(h.send({"type": "response.create"}))
    assert error["code"] == "conversation_full" and error["param"] == "response"
    rid = h.start(conversation="none")  # out of band: nothing is added
    h.session.response_text_delta(rid, "hi")
    h.session.response_finished(rid, h.now_ms)
    assert kit.types(h.drain())[-1] == "response.done"
    assert len(h.session.conversation) == 2


def test_a_reply_started_before_the_conversation_filled_is_kept(make_session, kit) -> None:
    h = make_session()
    h.session.conversation.max_items = 2
    h.user_text("one")
    rid = h.start()
    h.user_text("two")  # the conversation is full now; the reply's item still goes in
    h.session.response_text_delta(rid, "hi")
    h.session.response_finished(rid, h.now_ms)
    done = one_of(h.drain(), "response.done")
    assert done["response"]["status"] == "completed"
    assert len(h.session.conversation) == 3


def test_a_refused_commit_keeps_the_buffer(make_session, kit) -> None:
    h = full_session(make_session, session_overrides={"audio": {"input": {"turn_detection": None}}})
    h.append_ms(500)
    error = kit.error_of(h.send({"type": "input_audio_buffer.commit"}))
    assert error["code"] == "conversation_full"
    h.send({"type": "conversation.item.delete", "item_id": "item_x"})  # unknown: an error
    first = h.session.conversation.items()[0].item["id"]
    h.send({"type": "conversation.item.delete", "item_id": first})
    events = h.send({"type": "input_audio_buffer.commit"})
    committed = one_of(events, "input_audio_buffer.committed")
    assert h.session.conversation.get(committed["item_id"]).audio_ms() == 500.0


def test_a_turn_into_a_full_conversation_is_an_error_event(make_session, kit) -> None:
    h = full_session(make_session)  # server VAD, create_response on
    h.append_ms(500)
    h.session.vad_speech_started(0, 100)
    h.session.vad_speech_stopped(400, 500)
    events = h.drain()
    assert kit.types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "error",
    ]
    assert events[-1]["error"]["code"] == "conversation_full"
    assert not [e for e in h.effects() if type(e).__name__ == "StartResponse"]
    assert len(h.session.conversation) == 2
    # The session goes on: after a delete, the next turn is committed and answered.
    h.send({"type": "conversation.item.delete", "item_id": "item_x"})
    first = h.session.conversation.items()[0].item["id"]
    h.send({"type": "conversation.item.delete", "item_id": first})
    h.append_ms(500)
    h.session.vad_speech_started(600, 700)
    h.session.vad_speech_stopped(900, 1000)
    assert "response.created" in kit.types(h.drain())


def one_of(events, etype):
    matches = [e for e in events if e["type"] == etype]
    assert len(matches) == 1, [e["type"] for e in events]
    return matches[0]


def test_an_items_audio_is_read_without_a_copy_and_a_read_does_not_change_with_it() -> None:
    conversation = Conversation("conv_1")
    item = {"id": "item_a", "type": "message", "role": "assistant", "content": []}
    conversation.add(item, audio=b"\1\0" * 480, audio_format=AudioFormatType.PCM)
    stored = conversation.get("item_a")
    first = stored.audio_bytes()
    assert stored.audio_bytes() is first  # each response's context reads it: no copy each time
    conversation.append_audio(stored, b"\2\0" * 480)
    assert first == b"\1\0" * 480  # what was read stays as it was
    assert stored.audio_bytes() == b"\1\0" * 480 + b"\2\0" * 480
    conversation.truncate_audio(stored, 20)
    assert stored.audio_bytes() == b"\1\0" * 480 and stored.audio_ms() == 20.0
