"""The input audio buffer and turn detection: appends, commits, VAD turns, idle timeouts.

``SessionInput`` is a mixin of ``RealtimeSession``, kept apart so each file stays
readable. The shell runs the voice activity detector on the ``FeedVad`` audio and
reports speech with ``vad_speech_started`` / ``vad_speech_stopped``; the core decides
what a turn does (commit, response, barge-in), as in
https://platform.openai.com/docs/guides/realtime-vad.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import SessionConfig, Transcription, TurnDetection
from transceiver.protocol.contract import SessionKind
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.effects import Effect, FeedVad, ResetVad, Transcribe
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.items import copy_item, decode_base64
from transceiver.protocol.responses import Response

MIN_COMMIT_MS = 100
# With turn detection on and nobody speaking, keep only this much buffered audio.
IDLE_BUFFER_KEEP_MS = 10_000
# "The client may choose how much audio to place in each event up to a maximum of 15 MiB"
# (https://platform.openai.com/docs/api-reference/realtime-client-events/input_audio_buffer/append):
# the base64 text of one append, and of the audio of one conversation.item.create.
APPEND_MAX_CHARS = 15 * 1024 * 1024
# The input audio buffer, and the audio of one created item, hold at most this much audio
# (the transceiver's --max-input-audio-s): 41 MiB of PCM16 at 24 kHz, 7 MiB of G.711.
INPUT_AUDIO_MAX_MS = 15 * 60 * 1000


def check_audio_chars(chars: int, param: str) -> None:
    """Refuse base64 audio text longer than one event may carry, before decoding it."""
    if chars > APPEND_MAX_CHARS:
        raise ClientError(
            f"Audio too large: one event may carry at most 15 MiB ({APPEND_MAX_CHARS} "
            f"characters) of base64 audio, and this one has {chars}. Send the audio in "
            "smaller chunks.",
            code="audio_too_large",
            param=param,
        )


def check_audio_duration(audio_ms: float, max_ms: int, *, param: str, what: str) -> None:
    """Refuse audio past ``max_ms`` (the input buffer's bound, or one item's)."""
    if audio_ms > max_ms:
        raise ClientError(
            f"{what} may hold at most {max_ms / 60_000:g} minutes ({max_ms} ms) of audio; "
            f"this would make it {audio_ms:.0f} ms.",
            code="input_audio_too_long",
            param=param,
        )


@dataclass
class InputBuffer:
    """Input audio not yet committed, placed on the session audio clock."""

    audio: bytearray = field(default_factory=bytearray)
    start_ms: float = 0.0  # session audio time of the first buffered byte
    end_ms: float = 0.0  # session audio time: all audio appended so far

    def append(self, audio: bytes, fmt: AudioFormatType) -> None:
        self.audio += audio
        self.end_ms += fmt.duration_ms(len(audio))

    def duration_ms(self, fmt: AudioFormatType) -> float:
        return fmt.duration_ms(len(self.audio))

    def keep_last(self, ms: float, fmt: AudioFormatType) -> None:
        drop = len(self.audio) - fmt.byte_count(ms)
        drop -= drop % fmt.sample_bytes
        if drop > 0:
            del self.audio[:drop]
            self.start_ms += fmt.duration_ms(drop)

    def take(self, from_ms: float, fmt: AudioFormatType) -> bytes:
        """The audio from ``from_ms`` on; the buffer is left empty."""
        with memoryview(self.audio) as view:  # one copy, not a slice and then bytes
            audio = bytes(view[fmt.byte_count(max(0.0, from_ms - self.start_ms)) :])
        self.clear()
        return audio

    def clear(self) -> None:
        self.audio.clear()
        self.start_ms = self.end_ms


class SessionInput:
    config: SessionConfig
    kind: SessionKind
    ids: IdFactory
    conversation: Conversation
    closed: bool
    _effects: list[Effect]
    _responses: dict[str, Response]
    _default_response: str | None
    _transcribing: set[str]
    _last_activity_ms: float
    _input: InputBuffer
    _speech_item: str | None
    _speech_start_ms: float
    max_input_audio_ms: int

    def _emit(self, type: str, **fields: Any) -> None:
        raise NotImplementedError

    def _cancel(self, resp: Response, reason: str, now_ms: float) -> None:
        raise NotImplementedError

    def _start_response(self, params: Any) -> None:
        raise NotImplementedError

    @property
    def turn_detection(self) -> TurnDetection | None:
        return self.config.audio.input.turn_detection

    @property
    def input_format(self) -> AudioFormatType:
        return self.config.audio.input.format.type

    @property
    def speech_item_id(self) -> str | None:
        """The id the user item will have if the current speech is committed."""
        return self._speech_item

    def _input_config_changed(
        self, old_td: TurnDetection | None, old_format: AudioFormatType, now_ms: float
    ) -> None:
        """After a session update: restart turn detection if its configuration changed."""
        if self.turn_detection != old_td:
            self._reset_turn()
            self._last_activity_ms = now_ms  # an idle timeout counts from its own start
        if self.input_format != old_format and self._input.audio:
            # Buffered audio is in the old format: drop it rather than mix formats.
            self._input.clear()
            self._reset_turn()

    # -- the input audio buffer -------------------------------------------------------

    def _on_append(self, event: dict[str, Any], now_ms: float) -> None:
        self.append_base64(event.get("audio"), now_ms)

    def append_base64(self, text: Any, now_ms: float) -> None:
        """An append's ``audio`` (base64, checked here) into the input buffer."""
        check_audio_chars(len(text) if isinstance(text, str) else 0, "audio")
        audio = decode_base64(text, "audio")
        if self.turn_detection is None or self._speech_item is not None:
            # Growing until a commit (with turn detection and nobody speaking, append_audio
            # keeps only the last IDLE_BUFFER_KEEP_MS). Refused whole, the buffer unchanged:
            # the client may commit or clear and go on.
            fmt = self.input_format
            after_ms = self._input.duration_ms(fmt) + fmt.duration_ms(len(audio))
            what = "The input audio buffer (commit or clear it to append more)"
            check_audio_duration(after_ms, self.max_input_audio_ms, param="audio", what=what)
        self.append_audio(audio)

    def append_audio(self, audio: bytes) -> None:
        """Audio into the input buffer (client appends, or decoded media on WebRTC); the
        caller has checked it against ``max_input_audio_ms``."""
        fmt = self.input_format
        start_ms = self._input.end_ms
        self._input.append(audio, fmt)
        td = self.turn_detection
        if td is None:
            return
        self._effects.append(FeedVad(audio, fmt, start_ms, td))
        if self._speech_item is None and self._input.duration_ms(fmt) > 2 * IDLE_BUFFER_KEEP_MS:
            self._input.keep_last(IDLE_BUFFER_KEEP_MS, fmt)

    def refuse_append(self, event: dict[str, Any], error: ClientError) -> None:
        """The shell could not take an append (its noise filter cannot load,
        transceiver/noise.py): the ``error`` event, with the client's ``event_id``; the
        buffer is unchanged."""
        event_id = event.get("event_id")
        self._emit("error", error=error.to_error(event_id if isinstance(event_id, str) else None))

    def _check_item_audio(self, item: Any, param: str = "item", chars: int = 0) -> int:
        """The base64 audio of a ``conversation.item.create``, before it is decoded: its
        content parts together (with ``chars`` before them) carry at most what one append
        may. The characters counted so far."""
        content = item.get("content") if isinstance(item, dict) else None
        for index, part in enumerate(content if isinstance(content, list) else []):
            audio = part.get("audio") if isinstance(part, dict) else None
            if isinstance(audio, str):
                chars += len(audio)
                check_audio_chars(chars, f"{param}.content[{index}].audio")
        return chars

    def _check_response_audio(self, params: Any) -> None:
        """The base64 audio of a ``response.create``'s ``input`` items, before it is
        decoded: together at most what one append may (as one created item's)."""
        items = params.get("input") if isinstance(params, dict) else None
        chars = 0
        for index, item in enumerate(items if isinstance(items, list) else []):
            chars = self._check_item_audio(item, f"response.input[{index}]", chars)

    def _check_item_duration(self, audio: bytes, fmt: AudioFormatType) -> None:
        """The decoded audio of one created item: at most what the input buffer holds."""
        what = "One conversation item"
        audio_ms = fmt.duration_ms(len(audio))
        check_audio_duration(audio_ms, self.max_input_audio_ms, param="item.content", what=what)

    def _on_commit(self, event: dict[str, Any], now_ms: float) -> None:
        buffered = self._input.duration_ms(self.input_format)
        if buffered < MIN_COMMIT_MS:
            raise ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        self._commit(self._speech_item or self.ids.new("item"), self._input.start_ms)
        self._reset_turn()

    def _on_clear(self, event: dict[str, Any], now_ms: float) -> None:
        self._input.clear()
        self._reset_turn()
        self._emit("input_audio_buffer.cleared")

    def _reset_turn(self) -> None:
        self._speech_item = None
        self._effects.append(ResetVad())

    def _turn_committed(self, item_id: str, from_ms: float) -> bool:
        """A VAD or idle commit; with the conversation full, an ``error`` event instead,
        and the turn's audio is dropped (no client event to refuse, nothing to respond to)."""
        try:
            self._commit(item_id, from_ms)
        except ClientError as exc:
            self._input.clear()
            self._emit("error", error=exc.to_error(None))
            return False
        return True

    def _commit(self, item_id: str, from_ms: float) -> None:
        self.conversation.check_room()  # before taking the audio: a refused commit keeps it
        fmt = self.input_format
        audio = self._input.take(from_ms, fmt)
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self.conversation.add(item, audio=audio, audio_format=fmt)
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._emit("conversation.item.added", previous_item_id=previous, item=copy_item(item))
        self._emit("conversation.item.done", previous_item_id=previous, item=copy_item(item))
        transcription = self.config.audio.input.transcription
        if transcription is not None or self.kind is SessionKind.TRANSCRIPTION:
            self._transcribing.add(item_id)
            config = transcription if transcription is not None else Transcription()
            self._effects.append(Transcribe(item_id, audio, fmt, config))

    # -- turn detection (the shell runs the VAD) ------------------------------------

    def vad_speech_started(self, audio_start_ms: float, now_ms: float) -> None:
        td = self.turn_detection
        if self.closed or td is None or self._speech_item is not None:
            return
        self._speech_item = self.ids.new("item")
        self._speech_start_ms = max(audio_start_ms, self._input.start_ms)
        self._last_activity_ms = now_ms
        self._emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=int(self._speech_start_ms),
            item_id=self._speech_item,
        )
        if td.interrupt_response and self._default_response is not None:
            self._cancel(self._responses[self._default_response], "turn_detected", now_ms)

    def vad_speech_stopped(self, audio_end_ms: float, now_ms: float) -> None:
        td = self.turn_detection
        item_id = self._speech_item
        if self.closed or td is None or item_id is None:
            return
        self._speech_item = None
        self._last_activity_ms = now_ms
        self._emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=int(audio_end_ms), item_id=item_id
        )
        if not self._turn_committed(item_id, self._speech_start_ms):
            return
        if td.create_response and self.kind is SessionKind.REALTIME:
            if self._default_response is None:
                self._turn_response()

    def _idle_deadline(self) -> float | None:
        td = self.turn_detection
        timeout = td.idle_timeout_ms if td is not None else None
        if not timeout or self._speech_item is not None or self._default_response is not None:
            return None
        return self._last_activity_ms + float(timeout)

    def _idle_timeout(self, now_ms: float) -> None:
        """Nobody spoke for the idle timeout: commit what there is and respond."""
        idle = self._idle_deadline()
        if idle is None or now_ms < idle:
            return
        item_id = self.ids.new("item")
        self._last_activity_ms = now_ms
        self._emit(
            "input_audio_buffer.timeout_triggered",
            item_id=item_id,
            audio_start_ms=int(self._input.start_ms),
            audio_end_ms=int(self._input.end_ms),
        )
        if not self._turn_committed(item_id, self._input.start_ms):
            return
        td = self.turn_detection
        if td is not None and td.create_response and self.kind is SessionKind.REALTIME:
            self._turn_response()

    def _turn_response(self) -> None:
        """A turn's own reply. The session's configuration was checked when it was set,
        but a resumed session's (transceiver/proxy/fallback.py) was not: a ``prompt`` no
        library here resolves is an ``error`` event, not a crash."""
        try:
            self._start_response(None)
        except ClientError as exc:
            self._emit("error", error=exc.to_error(None))
