"""Phone calls into a Realtime session: the parts any phone transport shares.

A phone call's audio is G.711 at 8 kHz, and the Realtime API speaks it natively
(``audio/pcmu`` and ``audio/pcma``, transceiver/protocol/audio.py), so a phone transport
passes the caller's bytes to the session and the session's bytes to the phone, with no
resampling. Twilio Media Streams (relay/twilio.py) uses this module; a SIP endpoint can use
it the same way. Three parts:

- :func:`phone_session`: the session configuration of a call, from an operator default and
  the call's own settings, validated as ``POST /v1/realtime/client_secrets`` validates a
  session, with its audio fixed to the call's codec both ways (a different format is a
  :class:`~transceiver.protocol.errors.ClientError`: the phone cannot play it).
- :func:`admit_call`: a call enters through the relay's one admission path
  (:func:`relay.admission.admit`: drain, per-holder limit, placement, metrics with the
  call's transport label, ``session.placed`` / ``session.closed`` logs). A phone carries no
  API key, so the caller's holder (a Twilio account, a SIP trunk) takes the key's place in
  ``--max-sessions-per-key``.
- :class:`Playout`: what the caller heard. The transport tells it the assistant audio it
  handed to the phone (:meth:`Playout.sent`) and what the phone reports played
  (checkpoints: Twilio's echoed ``mark``; a SIP endpoint that paces RTP itself can confirm
  each frame as it sends it). On barge-in :meth:`Playout.cut` names each item whose audio
  was not all played, with the milliseconds that were, for a
  ``conversation.item.truncate``: the truncate "will synchronize the server's
  understanding of the audio with the client's playback" (OpenAI API reference,
  ``conversation.item.truncate``).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from relay.admission import Admission, admit
from relay.auth import Credentials
from relay.edge import Edge, KeyLimits
from relay.ephemeral import validate_session
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.errors import ClientError

log = logging.getLogger(__name__)

# Most checkpoints awaiting the phone's report. Past it no new checkpoint is set until the
# phone reports (what was heard is then counted at the last one): bounded, and only less
# precise, for a phone that stops reporting.
MAX_CHECKPOINTS = 1024
_DIRECTIONS = ("input", "output")


def phone_session(
    default: dict[str, Any] | None,
    session: dict[str, Any] | None = None,
    *,
    instructions: str | None = None,
    voice: str | None = None,
    model: str | None = None,
    codec: AudioFormatType = AudioFormatType.PCMU,
) -> dict[str, Any]:
    """The full session configuration of a call: ``default`` (the operator's), then the
    call's ``session``, then its ``instructions``, ``voice`` and ``model``; audio in and
    out in ``codec``. ``ClientError`` (with the ``param`` at fault) for anything a client
    secret's session would refuse, for a transcription session (a call is spoken to), and
    for an audio format other than ``codec``."""
    merged: dict[str, Any] = {**(default or {})}
    for key, value in (session or {}).items():
        if key == "audio" and isinstance(value, dict) and isinstance(merged.get("audio"), dict):
            merged["audio"] = {**merged["audio"], **value}
        else:
            merged[key] = value
    if merged.get("type", "realtime") != "realtime":
        raise ClientError("A phone call's session must be a 'realtime' session.", param="type")
    merged["type"] = "realtime"
    if instructions is not None:
        merged["instructions"] = instructions
    if model is not None:
        merged["model"] = model
    audio = merged.get("audio")
    audio = dict(audio) if isinstance(audio, dict) else {}
    for direction in _DIRECTIONS:
        part = audio.get(direction)
        part = dict(part) if isinstance(part, dict) else {}
        fmt = part.get("format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, codec.value):
            raise ClientError(
                f"A phone call's audio is G.711 ({codec.value}, 8 kHz) both ways; "
                f"'{fmt.get('type')}' cannot be used.",
                param=f"audio.{direction}.format.type",
            )
        part["format"] = {"type": codec.value}
        if direction == "output" and voice is not None:
            part["voice"] = voice
        audio[direction] = part
    merged["audio"] = audio
    return validate_session(merged)


def call_spec(session: dict[str, Any], transport: Any, conn: str | None = None) -> SessionSpec:
    """The transceiver session of a call with the configuration ``session`` (from
    :func:`phone_session`), on ``transport`` (a ``Transport`` member)."""
    return SessionSpec(
        kind=SessionKind.REALTIME,
        model=str(session.get("model") or "gpt-realtime"),
        transport=transport,
        overrides=session,
        conn=conn,
    )


async def admit_call(edge: Edge, spec: SessionSpec, holder: str) -> Admission:
    """Admit a call as :func:`relay.admission.admit` admits any session; ``holder`` (a
    Twilio account, a SIP trunk) counts against ``--max-sessions-per-key`` as a key would.
    Raises what ``admit`` raises."""
    credentials = Credentials(None, None, KeyLimits.identity(holder))
    return await admit(edge, credentials, spec)


@dataclass
class _Checkpoint:
    name: str
    item_id: str
    end_bytes: int  # the item's audio sent when the checkpoint was set


class Playout:
    """The assistant audio handed to a phone, and what of it the caller heard.

    Per item: the bytes sent, and the bytes played (up to the last checkpoint the phone
    confirmed). Audio of a response that was cut is not played again: :meth:`accepts`
    says so for the deltas still in flight.
    """

    def __init__(self, codec: AudioFormatType = AudioFormatType.PCMU) -> None:
        self.codec = codec
        self._sent: dict[str, int] = {}  # bytes sent, by item, for items not all played
        self._played: dict[str, int] = {}
        self._pending: deque[_Checkpoint] = deque()
        self._names = (str(n) for n in itertools.count(1))
        self._response_id: str | None = None  # the response whose audio is being sent
        self._response_open = False  # no response.done for it yet: more audio may come
        self._cut_response_id: str | None = None
        self._item_id = ""
        self.dropped_checkpoints = 0

    def accepts(self, response_id: str | None) -> bool:
        """Whether a delta of ``response_id`` is to be played (not one of a cut response)."""
        return response_id is None or response_id != self._cut_response_id

    def sent(self, response_id: str | None, item_id: str, size: int) -> None:
        """``size`` bytes of ``item_id``'s audio went to the phone."""
        if response_id != self._response_id:
            self._response_id = response_id
        self._response_open = True
        self._item_id = item_id
        self._sent[item_id] = self._sent.get(item_id, 0) + size
        self._played.setdefault(item_id, 0)

    def response_done(self, response_id: str | None) -> None:
        if response_id == self._response_id:
            self._response_open = False

    def checkpoint(self) -> str | None:
        """A new checkpoint after the audio sent so far (its name, for the phone to report
        when it has played to there), or ``None`` if none is needed or too many wait."""
        if not self._item_id or self._sent.get(self._item_id, 0) <= self._played_to_mark():
            return None
        if len(self._pending) >= MAX_CHECKPOINTS:
            if not self.dropped_checkpoints:
                log.warning("the phone confirms no playback: checkpoints are not set")
            self.dropped_checkpoints += 1
            return None
        name = next(self._names)
        self._pending.append(_Checkpoint(name, self._item_id, self._sent[self._item_id]))
        return name

    def _played_to_mark(self) -> int:
        """The end of the item's audio at its newest checkpoint (set or confirmed)."""
        for point in reversed(self._pending):
            if point.item_id == self._item_id:
                return point.end_bytes
        return self._played.get(self._item_id, 0)

    def played(self, name: str) -> bool:
        """The phone played up to checkpoint ``name`` (and so every earlier one); ``False``
        for a name that is not pending (unknown, or dropped by :meth:`cut`)."""
        if not any(point.name == name for point in self._pending):
            return False
        while self._pending:
            point = self._pending.popleft()
            if point.item_id in self._played:
                self._played[point.item_id] = max(self._played[point.item_id], point.end_bytes)
            if point.name == name:
                break
        for item in [i for i, size in self._sent.items() if i != self._item_id]:
            if self._played.get(item, 0) >= self._sent[item]:  # all heard: nothing to cut
                del self._sent[item], self._played[item]
        return True

    @property
    def unplayed(self) -> bool:
        """Audio sent and not confirmed played, or a response whose audio is still coming."""
        return self._response_open or any(
            self._sent[item] > self._played.get(item, 0) for item in self._sent
        )

    def heard_ms(self, item_id: str) -> int:
        return self._played.get(item_id, 0) // self.codec.bytes_per_ms

    def cut(self) -> list[tuple[str, int]]:
        """Stop: each item with audio not all played (or still coming), in order, with the
        milliseconds of it the caller heard. Pending checkpoints are dropped, and the rest
        of the current response's audio will not be accepted."""
        items = [item for item in self._sent if self._sent[item] > self._played.get(item, 0)]
        if self._response_open and self._item_id and self._item_id not in items:
            items.append(self._item_id)
        cut = [(item, self.heard_ms(item)) for item in items if item]
        self._cut_response_id = self._response_id
        self._response_open = False
        self._pending.clear()
        self._sent.clear()
        self._played.clear()
        self._item_id = ""
        return cut


def truncate_event(event_id: str, item_id: str, audio_end_ms: int) -> str:
    """The ``conversation.item.truncate`` for an item cut after ``audio_end_ms``."""
    return json.dumps(
        {
            "type": "conversation.item.truncate",
            "event_id": event_id,
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        }
    )
