"""The event-stream invariants of the Realtime API, checked on a recorded server stream.

One checker for every test that records a session (the pure protocol tests, the
end-to-end tests, the stock clients). What it holds a stream to, from the server-event
reference (https://platform.openai.com/docs/api-reference/realtime-server-events) and
the conversation guide (https://platform.openai.com/docs/guides/realtime-conversations):

- every event parses as the official SDK's server-event union (GA or beta), and has a
  unique ``event_id`` starting ``event_``; the first is ``session.created``;
- ``response.created`` comes once per response, ``in_progress``, with no output and no
  usage; one default-conversation response at a time (out-of-band ones may overlap);
- every event of a response falls between its ``response.created`` and its
  ``response.done``: no delta after the terminal event;
- ``output_index`` counts up from 0; every ``.added`` (output item, content part) has its
  ``.done``, and a part or delta belongs to an open item;
- text, transcript and argument deltas add up to their ``.done`` value; PCM16 audio
  deltas are whole samples;
- ``response.done`` has a terminal status and usage, lists exactly the items of its
  ``response.output_item.done`` events, and carries no audio bytes;
- VAD events pair up: ``speech_stopped`` and then ``committed`` name the item of the
  preceding ``speech_started``;
- items of an out-of-band response (``conversation: "none"``) never show up in
  ``conversation.item.*`` events;
- every response ends with ``response.done``, unless the session was closed
  (``allow_open``).

``output_audio_buffer.*`` events (WebRTC playback) are not part of a response's event
sequence: they may outlast ``response.done``.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import TypeAdapter

_ADAPTERS: dict[bool, TypeAdapter[Any]] = {}

# Beta names of GA events, so that one checker reads both dialects.
BETA_TO_GA = {
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

# A delta event -> (its done event, the done event's field that the deltas add up to).
GA_DELTA_DONE = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.output_audio_transcript.delta": (
        "response.output_audio_transcript.done",
        "transcript",
    ),
    "response.function_call_arguments.delta": (
        "response.function_call_arguments.done",
        "arguments",
    ),
}
_DONE_FIELD = {done: (delta, name) for delta, (done, name) in GA_DELTA_DONE.items()}
_TERMINAL = ("completed", "cancelled", "incomplete", "failed")


def _adapter(beta: bool) -> TypeAdapter[Any]:
    if beta not in _ADAPTERS:
        if beta:
            from openai.types.beta.realtime import RealtimeServerEvent as BetaEvent

            _ADAPTERS[beta] = TypeAdapter(BetaEvent)
        else:
            from openai.types.realtime import RealtimeServerEvent as GaEvent

            _ADAPTERS[beta] = TypeAdapter(GaEvent)
    return _ADAPTERS[beta]


def validate_with_sdk(event: dict[str, Any], beta: bool = False) -> None:
    """Strict validation against the official SDK's server-event union (GA or beta)."""
    if beta and event["type"].startswith("transcription_session."):
        # The beta SDK union lacks transcription_session.created, and its session model
        # requires the REST-only client_secret, which WebSocket events carry as null:
        # check the rest of the session against the .updated model.
        session = {**event["session"], "client_secret": {"expires_at": 0, "value": ""}}
        event = {**event, "type": "transcription_session.updated", "session": session}
    _adapter(beta).validate_python(event)


def ga_type(event: dict[str, Any], beta: bool) -> str:
    """The GA name of an event's type (beta names translated when ``beta``)."""
    etype: str = event["type"]
    return BETA_TO_GA.get(etype, etype) if beta else etype


def check_stream(
    events: list[dict[str, Any]],
    *,
    beta: bool = False,
    sdk: bool = True,
    allow_open: bool = False,
) -> None:
    """Assert the invariants of the module docstring on one session's whole stream.

    ``sdk``: validate each event against the SDK too; ``allow_open``: responses may lack
    ``response.done`` (the session was closed).
    """
    assert events, "no events"
    assert ga_type(events[0], beta) == "session.created", events[0]
    checker = _StreamChecker(beta)
    seen_ids: set[str] = set()
    for event in events:
        event_id = event.get("event_id")
        assert isinstance(event_id, str) and event_id.startswith("event_"), event
        assert event_id not in seen_ids, f"duplicate event_id {event_id}"
        seen_ids.add(event_id)
        if sdk:
            validate_with_sdk(event, beta)
        checker.event(ga_type(event, beta), event)
    if not allow_open:
        assert not checker.responses, f"responses without response.done: {list(checker.responses)}"


class _StreamChecker:
    """The state of :func:`check_stream` across one stream: the open responses, their
    items and parts, and the VAD events' item."""

    def __init__(self, beta: bool) -> None:
        self.beta = beta
        self.responses: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()
        self.default_active: str | None = None  # the default conversation's response
        self.out_of_band_items: set[str] = set()
        self.speech: dict[str, str] = {}

    def event(self, etype: str, event: dict[str, Any]) -> None:
        if etype.startswith("conversation.item.") and isinstance(event.get("item"), dict):
            item_id = event["item"]["id"]
            assert item_id not in self.out_of_band_items, "out-of-band item in conversation"
        if etype.startswith("output_audio_buffer."):
            return  # playback: may outlast response.done
        if etype == "response.created":
            self.created(event["response"])
            return
        rid = event["response"]["id"] if etype == "response.done" else event.get("response_id")
        if rid is None:
            _check_vad_event(etype, event, self.speech)
            return
        assert rid not in self.finished, f"{etype} after response.done of {rid}"
        assert rid in self.responses, f"{etype} before response.created of {rid}"
        if etype == "response.done":
            self.done(rid, event["response"])
        else:
            self.within(self.responses[rid], etype, event)

    def created(self, response: dict[str, Any]) -> None:
        rid = response["id"]
        assert rid not in self.responses and rid not in self.finished, (
            f"response {rid} created twice"
        )
        assert response["status"] == "in_progress" and response["output"] == []
        assert response["usage"] is None
        fmt = (
            response.get("output_audio_format")
            if self.beta
            else response["audio"]["output"]["format"]["type"]
        )
        self.responses[rid] = {
            "items": {},
            "parts": set(),
            "text": {},
            "done_items": [],
            "next": 0,
            "oob": response["conversation_id"] is None,
            "pcm": fmt in ("audio/pcm", "pcm16"),
        }
        if response["conversation_id"] is not None:
            assert self.default_active is None, f"{rid} while {self.default_active} is active"
            self.default_active = rid

    def within(self, state: dict[str, Any], etype: str, event: dict[str, Any]) -> None:
        """An event of an open response, before its ``response.done``."""
        if etype == "response.output_item.added":
            assert event["output_index"] == state["next"], "output_index must count up from 0"
            state["next"] += 1
            state["items"][event["output_index"]] = event["item"]["id"]
            if state["oob"]:
                self.out_of_band_items.add(event["item"]["id"])
        elif etype == "response.output_item.done":
            assert state["items"].pop(event["output_index"]) == event["item"]["id"]
            state["done_items"].append(event["item"])
        elif etype == "response.content_part.added":
            assert state["items"].get(event["output_index"]) == event["item_id"]
            part = (event["item_id"], event["output_index"], event["content_index"])
            assert part not in state["parts"], f"content part {part} added twice"
            state["parts"].add(part)
        elif etype == "response.content_part.done":
            state["parts"].remove((event["item_id"], event["output_index"], event["content_index"]))
        elif etype == "response.output_audio.delta":
            audio = base64.b64decode(event["delta"], validate=True)
            assert not state["pcm"] or len(audio) % 2 == 0, "PCM16 delta with half a sample"
        elif etype in GA_DELTA_DONE:
            assert state["items"].get(event["output_index"]) == event["item_id"], etype
            key = (etype, event["item_id"])
            state["text"][key] = state["text"].get(key, "") + event["delta"]
        elif etype in _DONE_FIELD:
            delta_type, name = _DONE_FIELD[etype]
            assert state["text"].pop((delta_type, event["item_id"]), "") == event[name], (
                f"{etype}: deltas do not add up to the done value"
            )

    def done(self, rid: str, response: dict[str, Any]) -> None:
        state = self.responses.pop(rid)
        assert not state["items"], f"output items without .done in {rid}: {state['items']}"
        assert not state["parts"], f"content parts without .done in {rid}: {state['parts']}"
        assert response["status"] in _TERMINAL, response["status"]
        assert response["output"] == state["done_items"], "done output != output_item.done"
        assert response["usage"] is not None
        for item in response["output"]:
            for part in item.get("content", []):
                assert "audio" not in part, "response.done carries audio bytes"
        self.finished.add(rid)
        if self.default_active == rid:
            self.default_active = None


def _check_vad_event(etype: str, event: dict[str, Any], speech: dict[str, str]) -> None:
    """speech_started -> speech_stopped -> committed name one item."""
    if etype == "input_audio_buffer.speech_started":
        speech["started"] = event["item_id"]
    elif etype == "input_audio_buffer.speech_stopped":
        assert speech.get("started") == event["item_id"], "speech_stopped of another item"
        speech["stopped"] = event["item_id"]
    elif etype == "input_audio_buffer.committed" and "stopped" in speech:
        assert speech.pop("stopped") == event["item_id"], "committed another item than stopped"
        speech.pop("started", None)
