"""``RealtimeSession.resume``: a session that goes on from one its client already has (the
openai backend's fallback, transceiver/proxy/fallback.py)."""

from __future__ import annotations

import random
from typing import Any

from tests.invariants import check_stream
from tests.invariants import validate_with_sdk as validate_event
from transceiver.protocol import IdFactory, RealtimeSession
from transceiver.protocol.config import apply_session_update, default_config
from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec
from transceiver.protocol.effects import StartResponse

ITEMS: list[dict[str, Any]] = [
    {
        "id": "item_user1",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": "My name is Ada."}],
    },
    {
        "id": "item_asst1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "Hello Ada."}],
    },
]


def resumed(beta: bool = False, **kwargs: Any) -> RealtimeSession:
    spec = SessionSpec(model="gpt-realtime", dialect=Dialect.BETA if beta else Dialect.GA)
    config = apply_session_update(
        default_config(SessionKind.REALTIME, "gpt-realtime"),
        {"type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"]},
    )
    return RealtimeSession.resume(
        spec,
        config,
        ITEMS,
        session_id="sess_upstream",
        conversation_id="conv_upstream",
        ids=IdFactory(random.Random(1)),
        **kwargs,
    )


def drain(session: RealtimeSession, beta: bool = False) -> list[dict[str, Any]]:
    events = session.events_to_send()
    for event in events:
        validate_event(event, beta)
    return events


def send(session: RealtimeSession, event: dict[str, Any], beta: bool = False) -> list[Any]:
    session.receive_client_event(event, 0.0)
    return drain(session, beta)


def test_resume_emits_nothing_and_keeps_the_session() -> None:
    session = resumed()
    assert drain(session) == []  # no second session.created
    assert session.id == "sess_upstream"
    assert session.conversation.id == "conv_upstream"
    assert [s.item["id"] for s in session.conversation.items()] == ["item_user1", "item_asst1"]
    (updated,) = send(session, {"type": "session.update", "session": {"type": "realtime"}})
    assert updated["type"] == "session.updated"
    assert updated["session"]["id"] == "sess_upstream"
    assert updated["session"]["instructions"] == "Be brief."  # the configuration it took
    assert updated["session"]["output_modalities"] == ["text"]


def test_replayed_items_keep_their_ids() -> None:
    session = resumed()
    (retrieved,) = send(session, {"type": "conversation.item.retrieve", "item_id": "item_user1"})
    assert retrieved["item"]["content"][0]["text"] == "My name is Ada."
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    added = send(
        session,
        {"type": "conversation.item.create", "previous_item_id": "item_user1", "item": item},
    )
    assert added[0]["previous_item_id"] == "item_user1"
    (deleted,) = send(session, {"type": "conversation.item.delete", "item_id": "item_asst1"})
    assert deleted["type"] == "conversation.item.deleted"
    # The replayed items are the next response's context, with their text.
    events = send(session, {"type": "response.create"})
    (start,) = [e for e in session.effects() if isinstance(e, StartResponse)]
    context = [c.item["id"] for c in start.request.context]
    assert context[0] == "item_user1" and "item_asst1" not in context
    assert start.request.instructions == "Be brief."
    session.response_text_delta(start.request.response_id, "Ada")
    session.response_finished(start.request.response_id, 0.0)
    events += drain(session)
    done = events[-1]
    assert done["type"] == "response.done"
    assert done["response"]["conversation_id"] == "conv_upstream"
    # What the client sees from here on is a well-formed stream (after its session.created).
    check_stream([{"type": "session.created", "event_id": "event_x"}, *events], sdk=False)


def test_resume_keeps_the_expiry() -> None:
    session = resumed(created_at_s=1000.0, expires_at_s=1060)  # a minute left
    assert session.expires_at_s == 1060
    session.tick(59_000.0)
    assert drain(session) == []
    session.tick(60_000.0)
    (expired,) = drain(session)
    assert expired["error"]["code"] == "session_expired"
    assert session.closed


def test_resume_in_the_beta_dialect() -> None:
    session = resumed(beta=True)
    assert drain(session, beta=True) == []  # nor a second conversation.created
    (retrieved,) = send(
        session, {"type": "conversation.item.retrieve", "item_id": "item_asst1"}, beta=True
    )
    assert retrieved["item"]["content"][0]["type"] == "audio"  # the beta name
    (updated,) = send(session, {"type": "session.update", "session": {}}, beta=True)
    assert updated["session"]["id"] == "sess_upstream"
    assert updated["session"]["modalities"] == ["text"]


def test_resume_skips_what_cannot_be_an_item() -> None:
    spec = SessionSpec()
    config = default_config(SessionKind.REALTIME, None)
    session = RealtimeSession.resume(spec, config, [{"type": "message"}, ITEMS[0], ITEMS[0]])
    assert [s.item["id"] for s in session.conversation.items()] == ["item_user1"]
    assert session.id.startswith("sess_") and drain(session) == []
