"""``--local-turn-detection``: the proxy runs the client's turn detection itself and sends
the upstream only the speech.

The client's ``server_vad`` or ``semantic_vad`` runs here, on the same speech detector
(models/vad.py) and end-of-turn judge (transceiver/turns.py) as the mock and local
backends; the upstream runs with ``turn_detection: null``
(https://platform.openai.com/docs/guides/realtime-vad, "Disable VAD": the client commits
and asks for responses). Silence is most of a call's audio, and the upstream bills it:

- audio goes upstream from ``prefix_padding_ms`` before speech starts; in a pause, it is
  held back, and goes up only if speech resumes; a turn ends with ``TAIL_MS`` after the
  last speech;
- at the end of a turn the proxy sends ``input_audio_buffer.commit`` and, with
  ``create_response``, ``response.create``; when speech starts during a response and
  ``interrupt_response`` is on, ``response.cancel``;
- the client sees ``input_audio_buffer.speech_started`` / ``speech_stopped`` as from the
  upstream, their ``audio_start_ms`` / ``audio_end_ms`` counted over all the audio it sent,
  and the committed item has the id ``speech_started`` named
  (transceiver/proxy/local_view.py).

``LocalTurns`` is driven by the session (transceiver/proxy/session.py): client audio in,
frames for the upstream and events for the client out (``take``); an end of turn the
model decides later sets ``wake``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from models.audio import to_pcm16
from models.silero import SileroFrames, SileroModel
from models.vad import (
    VAD_RATE_HZ,
    ServerVad,
    SilenceStarted,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import SemanticVad, TurnDetection
from transceiver.protocol.config import ServerVad as ServerVadConfig
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.proxy.local_view import (
    ItemIds,
    read_input_format,
    read_turn_detection,
    turn_detection_wire,
    with_turn_detection,
    without_turn_detection,
)
from transceiver.turns import LEAD_MS, TURN_WINDOW_MS, TurnJudge, TurnModel

# Audio after the last speech that goes upstream with a turn.
TAIL_MS = 200
# While nobody speaks, the audio held for the next turn's prefix padding: the padding, and
# the frames the detector needs to call speech (models/vad.py START_WINDOW).
IDLE_EXTRA_MS = 200
INJECTED = "event_proxy"
_PENDING = "pending"  # a response.create sent, its response.created not seen yet


class LocalTurns:
    """One proxied session's turn detection."""

    def __init__(
        self,
        *,
        realtime: bool,
        beta: bool,
        ids: IdFactory,
        session_id: str,
        turn_model: TurnModel | None,
        on_sent: Callable[[int], None],
        vad_model: SileroModel | None = None,
    ) -> None:
        """``on_sent(byte_count)``: audio went upstream (in the client's input format);
        ``vad_model``: Silero VAD (``--vad silero``) for the speech detector's frames."""
        self.realtime, self.beta = realtime, beta
        self.td: TurnDetection | None = ServerVadConfig(type="server_vad")
        self.fmt = AudioFormatType.PCM
        self.items = ItemIds()
        self.wake = asyncio.Event()
        self._injected: deque[str] = deque(maxlen=64)  # the proxy's recent events upstream
        self._create_id: str | None = None  # the proxy's response.create in flight
        self._ids = ids
        self._on_sent = on_sent
        self._configured = False  # the client's turn detection is known
        self._judge = (
            TurnJudge(turn_model, self._finished, session_id) if turn_model is not None else None
        )
        self._vad: ServerVad | None = None
        self._vad_config: tuple[float, int, int] | None = None
        self._vad_model = vad_model
        self._received_ms = 0.0  # the client's timeline: all the audio it appended
        self._pending = bytearray()  # received, not yet sent upstream nor dropped
        self._pending_start_ms = 0.0
        self._turn = bytearray()  # this turn's audio sent upstream, for the end-of-turn model
        self._speech_item: str | None = None
        self._paused = False
        self._response: str | None = None  # the upstream's default-conversation response
        self._interrupted: str | None = None  # the response barge-in cancelled
        self._upstream: list[str] = []
        self._client: list[dict[str, Any]] = []

    # -- configuration ----------------------------------------------------------------

    def start(self, session: dict[str, Any]) -> dict[str, Any]:
        """The start configuration (GA; a key's or an offer's): the client's, and the copy
        for the upstream, with turn detection off."""
        try:
            present, td = read_turn_detection(session, beta=False)
            fmt = read_input_format(session, beta=False)
        except ClientError:
            present, td, fmt = False, None, None  # the relay validated it: keep the defaults
        if present:
            self.td, self._configured = td, True
        if fmt is not None:
            self.fmt = fmt
        return without_turn_detection(session, beta=False)

    def client_update(self, event: dict[str, Any]) -> dict[str, Any]:
        """A client's session update as it goes upstream (turn detection off); the client's
        turn detection and format take effect (``ClientError``: refused, nothing changes)."""
        session = event.get("session")
        present, td = read_turn_detection(session, self.beta)
        fmt = read_input_format(session, self.beta)
        if fmt is not None and fmt != self.fmt:
            self.fmt = fmt
            self._pending.clear()  # audio in the old format is not mixed with the new
            self._pending_start_ms = self._received_ms
            self._reset_turn()
        if not present or not isinstance(session, dict):
            return event
        self._configured = True
        if td != self.td:
            self.td = td
            self._reset_turn()
        return {**event, "session": without_turn_detection(session, self.beta)}

    def client_view(self, event: dict[str, Any]) -> None:
        """A session object going to the client: its own turn detection, not the upstream's
        null. The first one the upstream shows gives the default (its own, before the
        proxy turned it off) unless the start configuration set one."""
        session = event.get("session")
        if not isinstance(session, dict):
            return
        if not self._configured:
            try:
                present, td = read_turn_detection(session, self.beta)
            except ClientError:
                present, td = False, None
            if present:
                self.td = td
            self._configured = True
        with_turn_detection(session, turn_detection_wire(self.td), self.beta)

    # -- the upstream's side ----------------------------------------------------------

    def upstream_event(self, event: dict[str, Any]) -> bool:
        """Follow an upstream event: commits answered, the response in progress. True if
        the event changed: a response barge-in cancelled ends as OpenAI's own VAD ends
        it, ``status_details.reason`` ``turn_detected`` (the upstream saw a client cancel)."""
        etype = event.get("type")
        if etype == "input_audio_buffer.committed":
            self.items.committed(event.get("item_id"))
        elif etype == "response.created":
            response = event.get("response") or {}
            if response.get("conversation_id", "") is not None:  # not out of band
                self._response = response.get("id")
        elif etype == "response.done":
            response = event.get("response") or {}
            if response.get("id") == self._response:
                self._response = None
            details = response.get("status_details")
            if response.get("id") == self._interrupted and isinstance(details, dict):
                self._interrupted = None
                if details.get("reason") == "client_cancelled":
                    details["reason"] = "turn_detected"
                    return True
        elif etype == "error":
            self.refused(event)
        return False

    def answers(self, event: dict[str, Any]) -> bool:
        """Whether an upstream ``error`` answers one of the proxy's own events."""
        return (event.get("error") or {}).get("event_id") in self._injected

    def refused(self, event: dict[str, Any]) -> None:
        """An upstream ``error`` (the client's or one answering the proxy's own event)."""
        error = event.get("error") or {}
        self.items.refused(error)
        if self._response == _PENDING and error.get("event_id") == self._create_id:
            self._response = None  # the proxy's response.create was refused

    # -- the client's audio -----------------------------------------------------------

    def append(self, audio: bytes) -> None:
        """Client audio (its input format): run the turn detection on it."""
        start_ms = self._received_ms
        self._received_ms += self.fmt.duration_ms(len(audio))
        self._pending += audio
        td = self.td
        if td is None:  # no turn detection: the client commits, and all audio goes up
            self._send_until(self._received_ms)
            return
        vad = self._detector(td)
        for event in vad.feed(to_pcm16(audio, self.fmt, VAD_RATE_HZ), start_ms):
            if isinstance(event, SpeechStarted):
                self._speech_started(td, event.audio_start_ms)
            elif isinstance(event, SilenceStarted) and self._speech_item is not None:
                self._send_until(event.audio_ms + TAIL_MS)
                self._paused = True
                if isinstance(td, SemanticVad):
                    self._ask(td, event.audio_ms)
            elif isinstance(event, SpeechResumed):
                self._paused = False
                if self._judge is not None:
                    self._judge.forget()
            elif isinstance(event, SpeechStopped):
                self._end_turn(event.audio_end_ms)
        if self._judge is not None and self._judge.look_due(self._received_ms):
            # the turn sent so far, then the pause held since
            self._judge.look(bytes(self._turn) + bytes(self._pending))
        if self._speech_item is None:
            keep_ms = td.prefix_padding_ms + IDLE_EXTRA_MS
            self._drop_until(self._received_ms - keep_ms)
        elif not self._paused:
            self._send_until(self._received_ms)

    def commit(self, event_id: str | None) -> None:
        """The client commits: what is held goes up before its commit, and the item keeps
        the id ``speech_started`` named, if speech was under way."""
        self._send_until(self._received_ms)
        self.items.committing(event_id, self._speech_item)
        self._reset_turn()

    def clear(self) -> None:
        self._pending.clear()
        self._pending_start_ms = self._received_ms
        self._reset_turn()

    def take(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Events for the client, then frames for the upstream, in order."""
        client, self._client = self._client, []
        upstream, self._upstream = self._upstream, []
        return client, upstream

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()

    # -- turns ------------------------------------------------------------------------

    def _detector(self, td: TurnDetection) -> ServerVad:
        config = (td.threshold, td.prefix_padding_ms, td.silence_duration_ms)
        if self._vad is None or self._vad_config != config:
            model = self._vad_model
            self._vad = ServerVad(
                threshold=td.threshold,
                prefix_padding_ms=td.prefix_padding_ms,
                silence_duration_ms=td.silence_duration_ms,
                classifier=SileroFrames(model, td.threshold) if model is not None else None,
            )
            self._vad_config = config
        return self._vad

    def _speech_started(self, td: TurnDetection, audio_start_ms: float) -> None:
        self._drop_until(audio_start_ms)
        self._speech_item = self._ids.new("item")
        self._paused = False
        self._turn.clear()
        self._emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=int(max(audio_start_ms, self._pending_start_ms)),
            item_id=self._speech_item,
        )
        if td.interrupt_response and self._response not in (None, _PENDING):
            self._inject({"type": "response.cancel", "response_id": self._response})
            self._interrupted = self._response

    def _ask(self, td: SemanticVad, pause_ms: float) -> None:
        """semantic_vad: has the user finished? (transceiver/turns.py)"""
        if self._judge is None:
            return  # the eagerness's max timeout ends the turn
        # The words of the turn so far (sent upstream: at most its last
        # 8 s) are judged too; what is held back is the pause, or speech after it
        audio = bytes(self._turn) if self._judge.transcribes else None
        self._judge.pause(self.fmt, pause_ms, td.eagerness, audio=audio)

    def _finished(self, pause_ms: float, min_silence_ms: int) -> None:
        """The end-of-turn model says the user finished at ``pause_ms``: the turn ends
        once the pause has lasted the eagerness's shortest (transceiver/turns.py)."""
        if self._vad is None or not self._vad.speaking or self._speech_item is None:
            return
        if not self._vad.end_pause(min_silence_ms):
            return  # the speech detector ends it then, unless speech resumes
        self._vad.reset()
        self._end_turn(pause_ms)
        self.wake.set()

    def _end_turn(self, audio_end_ms: float) -> None:
        item_id, td = self._speech_item, self.td
        if item_id is None or td is None:
            return
        if self._judge is not None:
            self._judge.forget()
        self._send_until(min(audio_end_ms + TAIL_MS, self._received_ms))
        self._speech_item = None
        self._paused = False
        self._turn.clear()
        self._emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=int(audio_end_ms), item_id=item_id
        )
        self.items.committing(self._inject({"type": "input_audio_buffer.commit"}), item_id)
        if td.create_response and self.realtime and self._response is None:
            self._create_id = self._inject({"type": "response.create"})
            self._response = _PENDING

    def _reset_turn(self) -> None:
        self._speech_item = None
        self._paused = False
        self._turn.clear()
        if self._vad is not None:
            self._vad.reset()
        if self._judge is not None:
            self._judge.forget()

    # -- audio held and sent ----------------------------------------------------------

    def _take_until(self, until_ms: float) -> bytes:
        count = min(
            self.fmt.byte_count(max(0.0, until_ms - self._pending_start_ms)), len(self._pending)
        )
        audio = bytes(self._pending[:count])
        del self._pending[:count]
        self._pending_start_ms += self.fmt.duration_ms(count)
        return audio

    def _drop_until(self, until_ms: float) -> None:
        self._take_until(until_ms)

    def _send_until(self, until_ms: float) -> None:
        audio = self._take_until(until_ms)
        if not audio:
            return
        if self._speech_item is not None:
            self._turn += audio
            keep = self.fmt.byte_count(TURN_WINDOW_MS + LEAD_MS)
            if len(self._turn) > keep:
                del self._turn[: len(self._turn) - keep]
        text = base64.b64encode(audio).decode("ascii")
        self._upstream.append(json.dumps({"type": "input_audio_buffer.append", "audio": text}))
        self._on_sent(len(audio))

    def _emit(self, etype: str, **fields: Any) -> None:
        self._client.append({"type": etype, "event_id": self._ids.event_id(), **fields})

    def _inject(self, event: dict[str, Any]) -> str:
        event_id = f"{INJECTED}_{self._ids.event_id()}"
        self._injected.append(event_id)
        self._upstream.append(json.dumps({"event_id": event_id, **event}))
        return event_id
