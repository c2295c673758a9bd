"""Shared helpers for the pure protocol tests.

Every server event a test sees goes through ``Harness.drain``, which validates it
against the official SDK union (GA or beta). At teardown every session's whole
stream is checked against the PROTOCOL.md section 12 invariants.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter

from tests.invariants import GA_DELTA_DONE, check_stream
from transceiver.protocol import IdFactory, RealtimeSession, SessionKind
from transceiver.protocol.contract import Dialect, SessionSpec, Transport
from transceiver.protocol.effects import Effect, StartResponse

_ADAPTERS: dict[bool, TypeAdapter[Any]] = {}

# Beta names of GA events, so one checker reads both dialects.
_BETA_TO_GA = {
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "conversation.item.created": "conversation.item.added",
    "transcription_session.created": "session.created",
    "transcription_session.updated": "session.updated",
}
_DELTA_DONE = GA_DELTA_DONE
_DONE_FIELD = {done: (delta, name) for delta, (done, name) in _DELTA_DONE.items()}


def _adapter(beta: bool) -> TypeAdapter[Any]:
    if beta not in _ADAPTERS:
        if beta:
            from openai.types.beta.realtime import RealtimeServerEvent as BetaEvent

            _ADAPTERS[beta] = TypeAdapter(BetaEvent)
        else:
            from openai.types.realtime import RealtimeServerEvent as GaEvent

            _ADAPTERS[beta] = TypeAdapter(GaEvent)
    return _ADAPTERS[beta]


def validate_event(event: dict[str, Any], beta: bool) -> None:
    """The event parses as the official SDK's server event union."""
    if beta and event["type"].startswith("transcription_session."):
        # The beta union lacks transcription_session.created (PROTOCOL.md section 5), and
        # its session model requires the REST-only client_secret, which WebSocket events
        # carry as null: check the rest of the session against the .updated model.
        session = {**event["session"], "client_secret": {"expires_at": 0, "value": ""}}
        event = {**event, "type": "transcription_session.updated", "session": session}
    _adapter(beta).validate_python(event)


def ga_type(event: dict[str, Any], beta: bool) -> str:
    etype: str = event["type"]
    return _BETA_TO_GA.get(etype, etype) if beta else etype


def check_invariants(
    events: list[dict[str, Any]], *, beta: bool = False, allow_open: bool = False
) -> None:
    """PROTOCOL.md section 12 "Event contract" on one session's whole stream.

    ``allow_open``: responses may lack ``response.done`` (the session was closed).
    """
    assert events and ga_type(events[0], beta) == "session.created", events[:1]
    seen_ids: set[str] = set()
    responses: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    default_active: str | None = None
    out_of_band_items: set[str] = set()
    for event in events:
        etype = ga_type(event, beta)
        event_id = event.get("event_id")
        assert isinstance(event_id, str) and event_id.startswith("event_"), event
        assert event_id not in seen_ids, f"duplicate event_id {event_id}"
        seen_ids.add(event_id)
        if etype.startswith("conversation.item.") and isinstance(event.get("item"), dict):
            assert event["item"]["id"] not in out_of_band_items, "out-of-band item in conversation"
        if etype.startswith("output_audio_buffer."):
            continue
        if etype == "response.created":
            response = event["response"]
            rid = response["id"]
            assert rid not in responses and rid not in finished, f"{rid} created twice"
            assert response["status"] == "in_progress" and response["output"] == []
            assert response["usage"] is None
            fmt = (
                response.get("output_audio_format")
                if beta
                else (response["audio"]["output"]["format"]["type"])
            )
            responses[rid] = {
                "items": {},
                "parts": set(),
                "text": {},
                "done_items": [],
                "next": 0,
                "oob": response["conversation_id"] is None,
                "pcm": fmt in ("audio/pcm", "pcm16"),
            }
            if response["conversation_id"] is not None:
                assert default_active is None, f"{rid} while {default_active} is active"
                default_active = rid
            continue
        rid = event.get("response_id")
        if etype == "response.done":
            rid = event["response"]["id"]
        if rid is None:
            continue
        assert rid not in finished, f"{etype} after response.done of {rid}"
        assert rid in responses, f"{etype} before response.created of {rid}"
        state = responses[rid]
        if etype == "response.output_item.added":
            assert event["output_index"] == state["next"], "output_index must count up from 0"
            state["next"] += 1
            state["items"][event["output_index"]] = event["item"]["id"]
            if state["oob"]:
                out_of_band_items.add(event["item"]["id"])
        elif etype == "response.output_item.done":
            assert state["items"].pop(event["output_index"]) == event["item"]["id"]
            state["done_items"].append(event["item"])
        elif etype == "response.content_part.added":
            assert state["items"].get(event["output_index"]) == event["item_id"]
            key = (event["item_id"], event["output_index"], event["content_index"])
            assert key not in state["parts"]
            state["parts"].add(key)
        elif etype == "response.content_part.done":
            state["parts"].remove((event["item_id"], event["output_index"], event["content_index"]))
        elif etype == "response.output_audio.delta":
            audio = base64.b64decode(event["delta"], validate=True)
            assert not state["pcm"] or len(audio) % 2 == 0, "PCM16 delta with half a sample"
        elif etype in _DELTA_DONE:
            assert state["items"].get(event["output_index"]) == event["item_id"]
            key = (etype, event["item_id"])
            state["text"][key] = state["text"].get(key, "") + event["delta"]
        elif etype in _DONE_FIELD:
            delta_type, name = _DONE_FIELD[etype]
            assert state["text"].pop((delta_type, event["item_id"]), "") == event[name], etype
        elif etype == "response.done":
            response = event["response"]
            assert not state["items"], f"output items without .done in {rid}"
            assert not state["parts"], f"content parts without .done in {rid}"
            assert response["status"] in ("completed", "cancelled", "incomplete", "failed")
            assert response["output"] == state["done_items"], "done output != output_item.done"
            assert response["usage"] is not None
            for item in response["output"]:
                for part in item.get("content", []):
                    assert "audio" not in part, "response.done carries audio bytes"
            del responses[rid]
            finished.add(rid)
            if default_active == rid:
                default_active = None
    if not allow_open:
        assert not responses, f"responses without response.done: {list(responses)}"


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
        fmt = self.session.input_format
        return 48 if fmt == "audio/pcm" else 8

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
            # output_audio_buffer.* may follow response.done (PROTOCOL.md section 5), which
            # tests/invariants.py does not allow for yet.
            check_stream(
                [e for e in self.stream if not e["type"].startswith("output_audio_buffer.")],
                beta=self.beta,
            )
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
