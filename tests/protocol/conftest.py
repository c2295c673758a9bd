"""Shared helpers for the pure protocol tests.

Every server event a test sees goes through ``Harness.drain``, which validates it
against the official SDK union (GA or beta). At teardown every session's whole
stream is checked against the event-stream invariants of tests/invariants.py.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.invariants import check_stream
from tests.invariants import validate_with_sdk as validate_event
from transceiver.protocol import IdFactory, RealtimeSession, SessionKind
from transceiver.protocol.contract import Dialect, SessionSpec, Transport
from transceiver.protocol.effects import Effect, StartResponse


def check_invariants(
    events: list[dict[str, Any]], *, beta: bool = False, allow_open: bool = False
) -> None:
    """The event-stream invariants (tests/invariants.py) on one session's whole stream;
    ``Harness.drain`` has validated each event against the SDK already.

    ``allow_open``: responses may lack ``response.done`` (the session was closed).
    """
    check_stream(events, beta=beta, sdk=False, allow_open=allow_open)


class Harness:
    """A session plus everything it emitted; all events are SDK-validated."""

    def __init__(
        self,
        *,
        kind: SessionKind = SessionKind.REALTIME,
        beta: bool = False,
        seed: int = 0,
        now_ms: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.beta = beta
        self.now_ms = now_ms
        spec = SessionSpec(
            kind=kind,
            model=kwargs.pop("model", None),
            dialect=Dialect.BETA if beta else Dialect.GA,
            transport=Transport.WEBRTC if kwargs.pop("media", False) else Transport.WEBSOCKET,
            overrides=kwargs.pop("session_overrides", None),
        )
        self.session = RealtimeSession(
            spec, now_ms=now_ms, ids=IdFactory(random.Random(seed)), **kwargs
        )
        self.stream: list[dict[str, Any]] = []
        self.all_effects: list[Effect] = []

    def drain(self) -> list[dict[str, Any]]:
        events = self.session.events_to_send()
        for event in events:
            validate_event(event, self.beta)
        self.stream.extend(events)
        return events

    def effects(self) -> list[Effect]:
        effects = self.session.effects()
        self.all_effects.extend(effects)
        return effects

    def send(self, event: Any, now_ms: float | None = None) -> list[dict[str, Any]]:
        self.session.receive_client_event(event, self.now_ms if now_ms is None else now_ms)
        return self.drain()

    def fmt_bytes_per_ms(self) -> int:
        return self.session.input_format.bytes_per_ms

    def append_ms(self, ms: int, byte: int = 1) -> bytes:
        audio = bytes([byte]) * (ms * self.fmt_bytes_per_ms())
        assert self.send({"type": "input_audio_buffer.append", "audio": b64(audio)}) == []
        return audio

    def user_text(self, text: str = "hello", **extra: Any) -> str:
        content = [{"type": "input_text", "text": text}]
        item = {"type": "message", "role": "user", "content": content}
        events = self.send({"type": "conversation.item.create", "item": item, **extra})
        return str(one(events, "conversation.item.done")["item"]["id"])

    def create_response(self, **params: Any) -> tuple[list[dict[str, Any]], StartResponse]:
        event: dict[str, Any] = {"type": "response.create"}
        if params:
            event["response"] = params
        events = self.send(event)
        starts = [e for e in self.effects() if isinstance(e, StartResponse)]
        assert len(starts) == 1, events
        return events, starts[0]

    def start(self, **params: Any) -> str:
        """``response.create`` and return the new response id."""
        return self.create_response(**params)[1].request.response_id

    def retrieve(self, item_id: str) -> dict[str, Any]:
        events = self.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item: dict[str, Any] = one(events, "conversation.item.retrieved")["item"]
        return item

    def check(self) -> None:
        """Finish what is still running, then check the whole stream."""
        if not self.session.closed:
            for rid in self.session.active_response_ids():
                self.session.response_finished(rid, self.now_ms)
            self.drain()
        check_invariants(self.stream, beta=self.beta, allow_open=self.session.closed)


def b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def one(events: list[dict[str, Any]], etype: str) -> dict[str, Any]:
    matches = [event for event in events if event["type"] == etype]
    assert len(matches) == 1, f"expected one {etype} in {types(events)}"
    return matches[0]


def error_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``error`` object of the single event, which must be an error."""
    assert types(events) == ["error"], types(events)
    error: dict[str, Any] = events[0]["error"]
    assert error["type"] and error["message"]
    return error


KIT = SimpleNamespace(
    Harness=Harness,
    b64=b64,
    types=types,
    one=one,
    error_of=error_of,
    check_invariants=check_invariants,
    validate_event=validate_event,
)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Helpers for tests (and for Hypothesis tests, which cannot use function fixtures)."""
    return KIT


@pytest.fixture
def make_session() -> Iterator[Any]:
    """Factory of ``Harness``; each session's stream is checked at teardown."""
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        harness = Harness(**kwargs)
        harness.drain()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.check()
