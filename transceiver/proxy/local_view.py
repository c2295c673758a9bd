"""What ``--local-turn-detection`` changes in a proxied session's events, apart from the
turns themselves (transceiver/proxy/turns.py): the client's turn detection and input format
read from its session objects, the session objects each side is shown, the ids of the user
items the proxy's commits create, and the audio seconds each way.

The upstream runs with ``turn_detection: null``; the client is shown its own turn detection.
An item committed by the proxy has the id the client saw in ``speech_started`` (the proxy's
own); the upstream's id for it is swapped for the client's in every upstream event, and back
in every client event (``conversation.item.delete``, ``item_reference``...).
"""

from __future__ import annotations

import copy
import re
from collections import deque
from typing import Any

from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import (
    AudioFormat,
    ServerVad,
    TurnDetection,
    validation_to_client_error,
)
from transceiver.protocol.errors import ClientError

_TURN_DETECTION: TypeAdapter[TurnDetection | None] = TypeAdapter(TurnDetection | None)
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_SESSION_EVENTS = frozenset(
    {
        "session.created",
        "session.updated",
        "transcription_session.created",
        "transcription_session.updated",
    }
)
# Upstream item ids whose client id the proxy remembers (the oldest are forgotten).
MAX_MAPPED_ITEMS = 4096
_MAX_PENDING_COMMITS = 64
_ITEM_ID = re.compile(r'"(item_[^"\\]{1,100})"')
_APPEND_AUDIO = re.compile(r'"audio"\s*:\s*"([A-Za-z0-9+/]*)(=*)"')


def is_session_event(etype: Any) -> bool:
    return etype in _SESSION_EVENTS


def _input(session: dict[str, Any], beta: bool) -> dict[str, Any] | None:
    """Where the input audio fields of a session object live (GA: ``audio.input``)."""
    if beta:
        return session
    audio = session.get("audio")
    if not isinstance(audio, dict):
        return None
    fields = audio.get("input")
    return fields if isinstance(fields, dict) else None


def td_param(beta: bool) -> str:
    return "session.turn_detection" if beta else "session.audio.input.turn_detection"


def read_turn_detection(session: Any, beta: bool) -> tuple[bool, TurnDetection | None]:
    """(present, value) of the turn detection in a session object or update; a value this
    server cannot run is a ``ClientError``."""
    fields = _input(session, beta) if isinstance(session, dict) else None
    if fields is None or "turn_detection" not in fields:
        return False, None
    raw = fields["turn_detection"]
    param = td_param(beta)
    try:
        td = _TURN_DETECTION.validate_python(raw)
    except ValidationError as exc:
        raise validation_to_client_error(exc, param, raw) from None
    if isinstance(td, ServerVad) and td.idle_timeout_ms is not None:
        raise ClientError(
            "idle_timeout_ms is not supported where this server detects turns itself "
            "(--local-turn-detection): leave it out or null.",
            param=param + ".idle_timeout_ms",
        )
    return True, td


def read_input_format(session: Any, beta: bool) -> AudioFormatType | None:
    """The input audio format a session object or update sets, if any (``ClientError`` if
    it is not one this server knows)."""
    if not isinstance(session, dict):
        return None
    if beta:
        name = session.get("input_audio_format")
        if name is None:
            return None
        if name not in _BETA_FORMATS:
            raise ClientError(
                f"Invalid value: '{name}'. Supported values are: 'pcm16', 'g711_ulaw', "
                "and 'g711_alaw'.",
                param="session.input_audio_format",
            )
        return AudioFormatType(_BETA_FORMATS[name])
    fields = _input(session, beta)
    if fields is None or not isinstance(fields.get("format"), dict):
        return None
    try:
        return AudioFormat.model_validate(fields["format"]).type
    except ValidationError as exc:
        raise validation_to_client_error(exc, "session.audio.input.format", fields) from None


def with_turn_detection(session: dict[str, Any], wire: dict[str, Any] | None, beta: bool) -> None:
    """Set a session object's (or update's) turn detection to ``wire``, in place."""
    if beta:
        session["turn_detection"] = wire
        return
    audio = session.setdefault("audio", {})
    if isinstance(audio, dict):
        fields = audio.setdefault("input", {})
        if isinstance(fields, dict):
            fields["turn_detection"] = wire


def without_turn_detection(session: dict[str, Any], beta: bool) -> dict[str, Any]:
    """A copy of a session update for the upstream: turn detection off."""
    upstream = copy.deepcopy(session)
    with_turn_detection(upstream, None, beta)
    return upstream


def turn_detection_wire(td: TurnDetection | None) -> dict[str, Any] | None:
    if td is None:
        return None
    wire: dict[str, Any] = td.model_dump(mode="json")
    return wire


class ItemIds:
    """The ids of the user items the proxy's commits create: the client's (from its
    ``speech_started``) for the upstream's, both ways."""

    def __init__(self) -> None:
        self._to_client: dict[str, str] = {}
        self._to_upstream: dict[str, str] = {}
        # Commits sent upstream and not yet answered: (event_id, the client's item id or
        # None for a commit whose item keeps the upstream's id), in order.
        self._pending: deque[tuple[str | None, str | None]] = deque(maxlen=_MAX_PENDING_COMMITS)

    def committing(self, event_id: str | None, client_item: str | None) -> None:
        self._pending.append((event_id, client_item))

    def committed(self, upstream_item: Any) -> None:
        """The upstream's ``input_audio_buffer.committed``: the oldest pending commit."""
        if not self._pending:
            return
        _, client_item = self._pending.popleft()
        if client_item is None or not isinstance(upstream_item, str):
            return
        self._to_client[upstream_item] = client_item
        self._to_upstream[client_item] = upstream_item
        if len(self._to_client) > MAX_MAPPED_ITEMS:
            oldest = next(iter(self._to_client))
            self._to_upstream.pop(self._to_client.pop(oldest), None)

    def refused(self, error: dict[str, Any]) -> None:
        """An upstream ``error``: a commit it answers is not pending any more."""
        event_id = error.get("event_id")
        for entry in self._pending:
            if entry[0] == event_id and (
                event_id is not None or error.get("code") == "input_audio_buffer_commit_empty"
            ):
                self._pending.remove(entry)
                return

    def to_client(self, text: str) -> str:
        return _swap(text, self._to_client)

    def to_upstream(self, text: str) -> str:
        return _swap(text, self._to_upstream)


def _swap(text: str, ids: dict[str, str]) -> str:
    if not ids or '"item_' not in text:
        return text
    return _ITEM_ID.sub(lambda m: '"' + ids.get(m.group(1), m.group(1)) + '"', text)


class AudioMeter:
    """``realtime_transceiver_upstream_audio_seconds_total``: input audio received from the
    client (``input_audio_buffer.append``) and sent upstream, in seconds."""

    def __init__(self, counter: Counter, fmt: AudioFormatType = AudioFormatType.PCM) -> None:
        self._received = counter.labels("received")
        self._sent = counter.labels("sent")
        self.fmt = fmt

    def received(self, byte_count: int) -> None:
        self._received.inc(self.fmt.duration_ms(byte_count) / 1000)

    def sent(self, byte_count: int) -> None:
        self._sent.inc(self.fmt.duration_ms(byte_count) / 1000)

    def passed(self, append: str) -> None:
        """An append forwarded as it is (the option off): counted from its base64 length."""
        match = _APPEND_AUDIO.search(append)
        if match is None:
            return
        chars, padding = len(match.group(1)), len(match.group(2))
        byte_count = (chars + padding) * 3 // 4 - padding
        self.received(byte_count)
        self.sent(byte_count)
