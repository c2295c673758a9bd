"""The relay's per-key request and token limits (relay/ratelimit.py), on a fake clock.

Every event the relay makes is checked against the official SDK's strict models.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.realtime import RateLimitsUpdatedEvent, RealtimeErrorEvent
from pydantic import ValidationError

from relay.edge import Edge
from relay.ratelimit import CANCEL_PREFIX, MAX_IDLE_HOLDERS, PASS, UNLIMITED, RateLimits
from relay.settings import RelaySettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frame(event: dict[str, Any]) -> str:
    return json.dumps(event)


def created(response_id: str = "resp_1") -> str:
    return frame({"type": "response.created", "event_id": "e", "response": {"id": response_id}})


def done(tokens: int, response_id: str = "resp_1") -> str:
    usage = {"total_tokens": tokens, "input_tokens": 0, "output_tokens": tokens}
    return frame(
        {"type": "response.done", "event_id": "e", "response": {"id": response_id, "usage": usage}}
    )


CREATE = frame({"type": "response.create", "event_id": "evt_mine"})
APPEND = frame({"type": "input_audio_buffer.append", "audio": "AAAA" * 1000})


def figures(text: str) -> dict[str, dict[str, Any]]:
    event = RateLimitsUpdatedEvent.model_validate_json(text, strict=True)
    return {limit.name or "": limit.model_dump() for limit in event.rate_limits}


def test_requests_per_key_across_sessions_and_refill() -> None:
    clock = Clock()
    books = RateLimits(2, None, clock)
    first, second, other = books.session("key_a"), books.session("key_a"), books.session("key_b")
    for session in (first, second):
        assert session.refuse(CREATE) is None
        assert session.on_server(created()).to_client == []
        [updated] = session.on_server(done(10)).to_client
    limits = figures(updated)
    assert limits["requests"]["limit"] == 2 and limits["requests"]["remaining"] == 0
    assert limits["requests"]["reset_seconds"] == pytest.approx(60.0)
    assert limits["tokens"] == {
        "name": "tokens",
        "limit": UNLIMITED,
        "remaining": UNLIMITED,
        "reset_seconds": 0,
    }
    refusal = first.refuse(CREATE)
    assert refusal is not None
    error = RealtimeErrorEvent.model_validate_json(refusal, strict=True).error
    assert (error.type, error.code) == ("requests", "rate_limit_exceeded")
    assert error.event_id == "evt_mine"
    assert "try again in 30.000s" in error.message
    assert other.refuse(CREATE) is None  # another key has its own books
    assert first.refuse(APPEND) is None  # appends pass, whatever the limits
    clock.now += 30.0  # a minute refills the whole limit: half a minute, one request
    assert first.refuse(CREATE) is None
    assert figures(first.updated())["requests"]["remaining"] == 1


def test_tokens_used_by_a_response_block_the_next_until_refilled() -> None:
    clock = Clock()
    books = RateLimits(None, 600, clock)
    session = books.session("key")
    session.on_server(created())
    [updated] = session.on_server(done(900)).to_client  # past the limit: the bucket owes 300
    tokens = figures(updated)["tokens"]
    assert tokens["remaining"] == 0 and tokens["reset_seconds"] == pytest.approx(90.0)
    refusal = session.refuse(CREATE)
    assert refusal is not None and json.loads(refusal)["error"]["type"] == "tokens"
    clock.now += 30.2  # 300 owed at 10 a second, and one token more
    assert session.refuse(CREATE) is None
    assert figures(session.updated())["requests"]["remaining"] == UNLIMITED


def test_a_response_the_session_starts_past_the_limit_is_cancelled_uncharged() -> None:
    books = RateLimits(1, None, Clock())
    session = books.session("key")
    assert session.on_server(created("resp_1")).to_upstream == []
    action = session.on_server(created("resp_vad"))  # server VAD made it: not refusable
    assert not action.drop
    [cancel] = action.to_upstream
    assert json.loads(cancel)["type"] == "response.cancel"
    assert json.loads(cancel)["response_id"] == "resp_vad"
    [error] = action.to_client
    RealtimeErrorEvent.model_validate_json(error, strict=True)
    assert books.bucket("key", "requests") is not None
    assert books.bucket("key", "requests").level == 0  # type: ignore[union-attr]
    # The session's answer to a cancel that came too late is the relay's, not the client's.
    cancel_id = json.loads(cancel)["event_id"]
    answer = {"type": "invalid_request_error", "code": "response_cancel_not_active"}
    late = {"type": "error", "event_id": "e", "error": {**answer, "event_id": cancel_id}}
    assert cancel_id.startswith(CANCEL_PREFIX) and session.on_server(frame(late)).drop
    other = {"type": "error", "event_id": "e", "error": {**answer, "event_id": "evt_client"}}
    assert not session.on_server(frame(other)).drop


def test_a_token_limit_alone_still_looks_at_responses_and_client_frames() -> None:
    """A requests limit is not the only one that refuses and cancels: past a token limit a
    response.create is refused and a response the session starts is cancelled."""
    session = RateLimits(None, 100, Clock()).session("key")
    assert not session.passes(created())
    session.on_server(done(150))  # past the limit: the bucket owes 50
    refusal = session.refuse(CREATE)
    assert refusal is not None and json.loads(refusal)["error"]["type"] == "tokens"
    action = session.on_server(created("resp_vad"))
    [cancel] = action.to_upstream
    assert json.loads(cancel)["response_id"] == "resp_vad"


def test_an_escaped_event_name_is_still_caught_when_the_response_starts() -> None:
    books = RateLimits(1, None, Clock())
    session = books.session("key")
    session.on_server(created("resp_1"))
    sneaky = '{"type": "response\\u002ecreate"}'
    assert session.refuse(sneaky) is None  # not seen by the cheap peek ...
    assert session.on_server(created("resp_2")).to_upstream  # ... but cancelled when made


def test_upstream_figures_are_folded_into_the_relays_one_event() -> None:
    session = RateLimits(5, None, Clock()).session("key")
    tokens = {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}
    requests = {"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 0.6}
    theirs = {"type": "rate_limits.updated", "event_id": "e", "rate_limits": [tokens, requests]}
    assert session.on_server(frame(theirs)).drop
    [updated] = session.on_server(done(1)).to_client
    limits = figures(updated)
    assert limits["tokens"]["remaining"] == 39000  # no limit of the relay's: OpenAI's
    assert limits["requests"]["limit"] == 5  # the relay's own


def test_frames_that_only_mention_the_names_pass_unparsed_or_untouched() -> None:
    session = RateLimits(1, 1, Clock()).session("key")
    delta = frame({"type": "response.output_text.delta", "delta": '"response.done"'})
    assert session.on_server(delta).to_client == [] and not session.on_server(delta).drop
    assert session.on_server(b'not json "response.done"').to_client == []
    assert session.refuse(b'{"type": "response.create"') is None  # malformed: the session's
    assert len(session.on_server(done(1).encode()).to_client) == 1  # binary frames too


def test_the_books_stay_bounded() -> None:
    clock = Clock()
    books = RateLimits(10, None, clock)
    for n in range(MAX_IDLE_HOLDERS):
        books.charge(f"key{n}", "requests", 1)
    clock.now += 60.0  # all refilled: forgotten when the next key comes
    books.charge("late", "requests", 1)
    assert len(books._buckets) == 1
    # Busy keys are kept, and the next sweep waits until the books have doubled.
    for n in range(2 * MAX_IDLE_HOLDERS + 1):
        books.charge(f"busy{n}", "requests", 1)
    assert len(books._buckets) == 2 * MAX_IDLE_HOLDERS + 2
    assert books.bucket("busy0", "requests").remaining == 9  # type: ignore[union-attr]


def test_settings_reach_the_edge_and_refuse_nonsense() -> None:
    edge = Edge.create(RelaySettings(rate_limit_requests_per_min=7, rate_limit_tokens_per_min=9000))
    assert edge.rates.limits == {"requests": 7, "tokens": 9000}
    with pytest.raises(ValidationError):
        RelaySettings(rate_limit_requests_per_min=0)


def test_without_limits_the_relay_looks_at_no_client_frame_and_parses_no_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing can be refused or cancelled: the audio path does no work for the limits."""

    def looked(*args: object) -> None:
        raise AssertionError("looked at")

    unlimited = RateLimits(None, None, Clock()).session("key")
    requests_only = RateLimits(3, None, Clock()).session("key")
    assert unlimited.passes(created()) and not requests_only.passes(created())
    monkeypatch.setattr("relay.ratelimit._contains", looked)
    monkeypatch.setattr("relay.ratelimit._event", looked)
    assert unlimited.refuse(CREATE) is None and unlimited.refuse(APPEND) is None
    assert unlimited.on_server(created()) is PASS
    for session in (unlimited, requests_only):  # no token limit: no usage to read
        [updated] = session.on_server(done(5)).to_client
        assert figures(updated)["tokens"]["limit"] == UNLIMITED
