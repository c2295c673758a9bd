"""The conversation a session keeps is bounded: a number of items, and audio in all (the
oldest items' audio is let go first; their transcripts and text stay)."""

from __future__ import annotations

import base64

from transceiver.protocol.conversation import Conversation


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
    try:
        conversation.add({"id": "item_3", "type": "message", "content": []})
    except Exception as exc:  # a ClientError: the session answers with an error event
        assert getattr(exc, "code", None) == "conversation_full"
    else:
        raise AssertionError("a fourth item was taken")
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
