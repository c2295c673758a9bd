"""The Realtime session state machine (sans-I/O, in the manner of python-websockets).

Push in: ``receive_client_event``, ``vad_speech_started/stopped``, ``transcription_*``,
``response_*`` (backend output, tagged with its response id) and ``tick``. Drain out:
``events_to_send()`` (server events, already in the client's GA or beta dialect) and
``effects()`` (commands for the shell). Bad client input never raises: it becomes an
``error`` event with the client's ``event_id`` and the session goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from transceiver.protocol.beta import BetaDialect
from transceiver.protocol.config import (
    RealtimeSessionConfig,
    SessionConfig,
    apply_session_update,
    default_config,
    session_wire,
)
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.conversation import CONVERSATION_AUDIO_MAX_MS, Conversation
from transceiver.protocol.effects import (
    CancelResponse,
    Close,
    ContextItem,
    Effect,
    ResponseRequest,
    StartResponse,
)
from transceiver.protocol.errors import ClientError, check_known_fields, shown_value
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.input_audio import INPUT_AUDIO_MAX_MS, InputBuffer, SessionInput
from transceiver.protocol.item_events import SessionItems
from transceiver.protocol.items import copy_item
from transceiver.protocol.media import check_media_formats, with_pcm_audio
from transceiver.protocol.requests import PromptResolver, build_response, check_session_prompt
from transceiver.protocol.responses import Response, ResponseWriter
from transceiver.protocol.results import SessionResults
from transceiver.protocol.wire import bare_append_audio, check_depth, parse_client_frame

# OpenAI's Realtime conversations guide: "The maximum duration of a Realtime session is
# 60 minutes".
SESSION_MAX_MS = 60 * 60 * 1000
_DEFAULT_SPEC = SessionSpec()


class _Events:
    """The server events a session has produced, in the client's dialect.

    The response writer emits here rather than through a bound method of the session, and
    client events are dispatched through ``_HANDLERS`` (functions, not bound methods): no
    part of a session refers back to it, so a closed session is freed as soon as its shell
    lets go, without waiting for a garbage-collection cycle.
    """

    def __init__(self, ids: IdFactory, kind: SessionKind, dialect: BetaDialect | None) -> None:
        self._ids = ids
        self._kind = kind.value
        self._dialect = dialect
        self.queued: list[dict[str, Any]] = []

    def emit(self, type: str, **fields: Any) -> None:
        event = {"type": type, "event_id": self._ids.event_id(), **fields}
        if self._dialect is not None:
            translated = self._dialect.server_event_to_beta(event, self._kind)
            if translated is not None:
                self.queued.append(translated)
        else:
            self.queued.append(event)

    def take(self) -> list[dict[str, Any]]:
        events, self.queued = self.queued, []
        return events


class RealtimeSession(SessionInput, SessionResults, SessionItems):
    def __init__(
        self,
        spec: SessionSpec = _DEFAULT_SPEC,
        *,
        now_ms: float = 0.0,
        created_at_s: float = 0.0,
        ids: IdFactory | None = None,
        max_duration_ms: int = SESSION_MAX_MS,
        max_input_audio_ms: int = INPUT_AUDIO_MAX_MS,
        max_conversation_audio_ms: int = CONVERSATION_AUDIO_MAX_MS,
        prompts: PromptResolver | None = None,
    ) -> None:
        """Raises ``ClientError`` when ``spec.overrides`` is not a valid configuration.

        ``prompts``: the server's prompt library, which resolves a ``prompt``.

        ``max_input_audio_ms`` bounds the input audio buffer and the audio of one
        ``conversation.item.create``; more is refused with an ``error`` event.
        ``max_conversation_audio_ms`` bounds the audio the conversation keeps (the oldest
        items' audio is let go past it).
        """
        self.spec = spec
        self.kind = spec.kind
        self.beta = spec.beta
        self._dialect = BetaDialect() if spec.beta else None
        self.media = spec.media  # WebRTC/SIP: output audio goes on a media track
        self.prompts = prompts
        self.assistant_spoke = False  # audio of a response went out: the voice is fixed
        self.ids = ids or IdFactory()
        self.id = self.ids.new("sess")
        self.max_conversation_audio_ms = max_conversation_audio_ms
        self.conversation = self._new_conversation(self.ids.new("conv"))
        self.config = default_config(spec.kind, spec.model)
        if spec.overrides:
            overrides = spec.overrides
            if spec.media:  # a key's or an offer's audio format means nothing on a track
                overrides = with_pcm_audio(overrides)
            self.config = apply_session_update(self.config, overrides)
            check_session_prompt(self.config, prompts)
            _check_transcription_delay(self.config)
        self.created_ms = now_ms
        self.expires_ms = now_ms + max_duration_ms
        self.expires_at_s = int(created_at_s + max_duration_ms / 1000)
        self.closed = False
        self.max_input_audio_ms = max_input_audio_ms
        self._events = _Events(self.ids, self.kind, self._dialect)
        self._effects: list[Effect] = []
        self._writer = ResponseWriter(self._events.emit, self.ids)
        self._input = InputBuffer()  # in the session's input format
        self._speech_item: str | None = None
        self._speech_start_ms = 0.0
        self._last_activity_ms = now_ms
        self._responses: dict[str, Response] = {}
        self._default_response: str | None = None
        self._transcribing: set[str] = set()
        self._emit("session.created", session=self.session_object())
        if spec.beta:
            self._emit(
                "conversation.created",
                conversation={"id": self.conversation.id, "object": "realtime.conversation"},
            )

    @classmethod
    def resume(
        cls,
        spec: SessionSpec,
        config: SessionConfig,
        items: Iterable[dict[str, Any]] = (),
        *,
        session_id: str | None = None,
        conversation_id: str | None = None,
        expires_at_s: int | None = None,
        now_ms: float = 0.0,
        created_at_s: float = 0.0,
        ids: IdFactory | None = None,
        max_input_audio_ms: int = INPUT_AUDIO_MAX_MS,
    ) -> RealtimeSession:
        """A session that goes on from one its client already has (the openai backend's
        fallback, transceiver/proxy/fallback.py). ``config`` and ``items`` (GA items, in
        order, without audio) are taken as they are, items keep their ids, and nothing is
        emitted for them, not even ``session.created``: the client has seen its session
        start. It still expires at ``expires_at_s`` (wall clock, like ``created_at_s``)."""
        left_ms = SESSION_MAX_MS
        if expires_at_s is not None and expires_at_s > created_at_s:
            left_ms = min(left_ms, int((expires_at_s - created_at_s) * 1000))
        fresh = dataclasses.replace(spec, overrides=None)
        session = cls(
            fresh,
            now_ms=now_ms,
            created_at_s=created_at_s,
            ids=ids,
            max_duration_ms=left_ms,
            max_input_audio_ms=max_input_audio_ms,
        )
        session._events.take()  # its own session.created (and beta conversation.created)
        session.config = config
        session.id = session_id or session.id
        if conversation_id:
            session.conversation = session._new_conversation(conversation_id)
        if expires_at_s is not None and expires_at_s > created_at_s:
            session.expires_at_s = expires_at_s
        for item in items:
            item_id = item.get("id")
            if isinstance(item_id, str) and item_id not in session.conversation:
                session.conversation.add(copy_item(item))
        return session

    def _new_conversation(self, conversation_id: str) -> Conversation:
        return Conversation(conversation_id, max_audio_ms=self.max_conversation_audio_ms)

    # -- output ------------------------------------------------------------------

    def _emit(self, type: str, **fields: Any) -> None:
        self._events.emit(type, **fields)

    def _error(self, error: ClientError, client_event_id: str | None) -> None:
        self._emit("error", error=error.to_error(client_event_id))

    def events_to_send(self) -> list[dict[str, Any]]:
        return self._events.take()

    def effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def session_object(self) -> dict[str, Any]:
        obj = {
            "object": (
                "realtime.transcription_session"
                if self.kind is SessionKind.TRANSCRIPTION
                else "realtime.session"
            ),
            "id": self.id,
            **session_wire(self.config),
            "expires_at": self.expires_at_s,
        }
        return obj

    @property
    def realtime_config(self) -> RealtimeSessionConfig | None:
        """The configuration of a realtime session (``None`` in a transcription session)."""
        return self.config if isinstance(self.config, RealtimeSessionConfig) else None

    # -- client events -----------------------------------------------------------

    def receive_client_event(self, raw: str | bytes | dict[str, Any], now_ms: float) -> None:
        if self.closed:
            return
        if isinstance(raw, dict):
            event = raw
        elif (audio := bare_append_audio(raw)) is not None and self._append_bare(audio, now_ms):
            return  # most frames: no general parse
        else:
            try:
                event = parse_client_frame(raw)
            except ClientError as exc:
                self._error(exc, None)
                return
        client_event_id = event.get("event_id")
        if not isinstance(client_event_id, str):
            client_event_id = None
        try:
            check_depth(event)
            if "type" not in event:
                raise ClientError("The 'type' field is missing.", code="invalid_event")
            if self._dialect is not None:
                event = self._dialect.client_event_to_ga(event, self.kind.value)
            handler = _HANDLERS.get(event["type"]) if isinstance(event["type"], str) else None
            if handler is None:
                raise ClientError(
                    f"Invalid value: '{shown_value(event['type'])}'. Supported values are: "
                    + ", ".join(f"'{name}'" for name in _HANDLERS)
                    + ".",
                    param="type",
                )
            check_known_fields(event, _EVENT_FIELDS[event["type"]])
            handler(self, event, now_ms)
        except ClientError as exc:
            self._error(exc, client_event_id)

    def _append_bare(self, audio: str, now_ms: float) -> bool:
        """A bare append's audio into the buffer; False, the buffer unchanged, if it is
        refused (the general parse then gives the exact error)."""
        try:
            self.append_base64(audio, now_ms)
        except ClientError:
            return False
        return True

    def _on_session_update(self, event: dict[str, Any], now_ms: float) -> None:
        old_td, old_format = self.turn_detection, self.input_format
        config = apply_session_update(self.config, event.get("session"))
        self._check_voice_change(config)
        _check_transcription_delay(config)
        if self.media:
            check_media_formats(session_wire(config))
        check_session_prompt(config, self.prompts)
        self.config = config
        self._input_config_changed(old_td, old_format, now_ms)
        self._emit("session.updated", session=self.session_object())

    def _check_voice_change(self, config: SessionConfig) -> None:
        """As OpenAI: the voice cannot change once the assistant has spoken in the session."""
        old, new = self.realtime_config, config
        if not self.assistant_spoke or old is None or not isinstance(new, RealtimeSessionConfig):
            return
        if new.audio.output.voice != old.audio.output.voice:
            raise ClientError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )

    def _on_output_clear(self, event: dict[str, Any], now_ms: float) -> None:
        # On WebRTC the relay plays the audio, so it answers output_audio_buffer.clear
        # itself and truncates the item to what was heard (relay/webrtc.py); the event
        # reaches the core only from a WebSocket client, where there is no playback.
        raise ClientError(
            "output_audio_buffer.clear is only supported on WebRTC and SIP connections.",
            param="type",
        )

    def _on_response_create(self, event: dict[str, Any], now_ms: float) -> None:
        if self.realtime_config is None:
            raise ClientError("Transcription sessions do not create responses.", param="type")
        params = event.get("response")
        in_conversation = not (isinstance(params, dict) and params.get("conversation") == "none")
        if in_conversation and self._default_response is not None:
            raise ClientError(
                "Conversation already has an active response in progress: "
                f"{self._default_response}. Wait until the response is finished before "
                "creating a new one.",
                code="conversation_already_has_active_response",
            )
        self._check_response_audio(params)
        if self.media:
            check_media_formats(params, "response")
        if in_conversation:  # a turn's own reply (VAD) goes in even when it fills it
            self.conversation.check_room("response")
        elif (
            sum(not resp.in_conversation for resp in self._responses.values())
            >= MAX_OUT_OF_BAND_RESPONSES
        ):
            raise ClientError(
                f"{MAX_OUT_OF_BAND_RESPONSES} out-of-band responses are in progress, the most "
                "a session may have at once; wait for a response.done or cancel one first.",
                code="too_many_responses",
                param="response.conversation",
            )
        self._start_response(params)

    def _start_response(self, params: Any) -> None:
        config = self.realtime_config
        if config is None:
            raise ClientError("Transcription sessions do not create responses.", param="type")
        temperature = self._dialect.response_temperature() if self._dialect else None
        resp, request = build_response(
            params,
            config,
            self.conversation,
            self.ids,
            prompts=self.prompts,
            temperature=temperature,
            input_audio=(self.input_format, self.max_input_audio_ms),
        )
        self._responses[resp.id] = resp
        if resp.in_conversation:
            self._default_response = resp.id
        self._emit("response.created", response=resp.wire("in_progress"))
        self._effects.append(StartResponse(request))

    def preview_response(self, transcript: str) -> ResponseRequest | None:
        """The request a VAD commit of the current speech would start now, if it would.

        For preemptive generation: the shell may start the reply while the silence
        window runs, and keep it only if the real request turns out the same.
        """
        td, config = self.turn_detection, self.realtime_config
        if (
            self.closed
            or td is None
            or not td.create_response
            or config is None
            or self._default_response is not None
            or self._speech_item is None
        ):
            return None
        temperature = self._dialect.session_temperature if self._dialect else None
        _, request = build_response(
            None, config, self.conversation, self.ids, prompts=self.prompts, temperature=temperature
        )
        item = {
            "id": self._speech_item,
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": transcript}],
        }
        context = (*request.context, ContextItem(item, None, self.input_format))
        return dataclasses.replace(request, response_id="resp_preview", context=context)

    def _on_response_cancel(self, event: dict[str, Any], now_ms: float) -> None:
        response_id = event.get("response_id") or self._default_response
        resp = self._responses.get(response_id) if isinstance(response_id, str) else None
        if resp is None:
            raise ClientError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
            )
        self._cancel(resp, "client_cancelled", now_ms)

    def _cancel(self, resp: Response, reason: str, now_ms: float) -> None:
        self._effects.append(CancelResponse(resp.id, reason))
        self._finish(resp, "cancelled", {"type": "cancelled", "reason": reason}, now_ms)

    def _finish(
        self, resp: Response, status: str, details: dict[str, Any] | None, now_ms: float
    ) -> None:
        self._writer.finish(resp, status, details)
        del self._responses[resp.id]
        if self._default_response == resp.id:
            self._default_response = None
        # idle_timeout_ms "is applied after the last model response's audio has finished
        # playing" (OpenAI API reference, session.update); a cancelled reply was cut off.
        cancelled = status == "cancelled"
        self._last_activity_ms = now_ms if cancelled else resp.playback_end_ms(now_ms, self.media)

    def active_response_ids(self) -> list[str]:
        return list(self._responses)

    # -- time -----------------------------------------------------------------------

    def next_deadline_ms(self) -> float:
        deadline = self.expires_ms
        idle = self._idle_deadline()
        return min(deadline, idle) if idle is not None else deadline

    def tick(self, now_ms: float) -> None:
        if self.closed:
            return
        if now_ms >= self.expires_ms:
            minutes = int((self.expires_ms - self.created_ms) // 60_000)
            # Every response.created still gets its response.done.
            expired = {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "The session expired.",
            }
            for resp in list(self._responses.values()):
                self._effects.append(CancelResponse(resp.id, "session_expired"))
                self._finish(resp, "failed", {"type": "failed", "error": expired}, now_ms)
            self._error(
                ClientError(
                    f"Your session hit the maximum duration of {minutes} minutes.",
                    code="session_expired",
                ),
                None,
            )
            self.close(now_ms)
            self._effects.append(Close(1000, "session expired"))
            return
        self._idle_timeout(now_ms)

    def close(self, now_ms: float) -> None:
        """Idempotent teardown: cancel what runs; nothing is emitted afterwards."""
        if self.closed:
            return
        for resp in list(self._responses.values()):
            self._effects.append(CancelResponse(resp.id, "client_cancelled"))
        self._responses.clear()
        self._default_response = None
        self._transcribing.clear()  # late transcripts are dropped like late response output
        self.closed = True


_Handler = Callable[[RealtimeSession, dict[str, Any], float], None]
_HANDLERS: dict[str, _Handler] = {
    "session.update": RealtimeSession._on_session_update,
    "input_audio_buffer.append": RealtimeSession._on_append,
    "input_audio_buffer.commit": RealtimeSession._on_commit,
    "input_audio_buffer.clear": RealtimeSession._on_clear,
    "output_audio_buffer.clear": RealtimeSession._on_output_clear,
    "conversation.item.create": RealtimeSession._on_item_create,
    "conversation.item.retrieve": RealtimeSession._on_item_retrieve,
    "conversation.item.delete": RealtimeSession._on_item_delete,
    "conversation.item.truncate": RealtimeSession._on_item_truncate,
    "response.create": RealtimeSession._on_response_create,
    "response.cancel": RealtimeSession._on_response_cancel,
}

# Responses with ``conversation: "none"`` in progress at once, at most (each holds its
# input and a backend task until its response.done).
MAX_OUT_OF_BAND_RESPONSES = 16

# The fields of each client event (the API reference's client events; the beta dialect's
# are translated to these first). Another is an error, as at OpenAI: a misplaced field
# (response.create's ``instructions`` outside ``response``) would otherwise be ignored.
_COMMON = frozenset({"type", "event_id"})
_EVENT_FIELDS: dict[str, frozenset[str]] = {
    "session.update": _COMMON | {"session"},
    "input_audio_buffer.append": _COMMON | {"audio"},
    "input_audio_buffer.commit": _COMMON,
    "input_audio_buffer.clear": _COMMON,
    "output_audio_buffer.clear": _COMMON,
    "conversation.item.create": _COMMON | {"previous_item_id", "item"},
    "conversation.item.retrieve": _COMMON | {"item_id"},
    "conversation.item.delete": _COMMON | {"item_id"},
    "conversation.item.truncate": _COMMON | {"item_id", "content_index", "audio_end_ms"},
    "response.create": _COMMON | {"response"},
    "response.cancel": _COMMON | {"response_id"},
}
assert _EVENT_FIELDS.keys() == _HANDLERS.keys()


def _check_transcription_delay(config: SessionConfig) -> None:
    """``transcription.delay`` picks how long a streaming model waits before it writes; the
    engines here transcribe a turn once it is committed, so there is nothing to pick."""
    transcription = config.audio.input.transcription
    if transcription is not None and transcription.delay is not None:
        raise ClientError(
            "audio.input.transcription.delay is not supported by this server: it transcribes "
            "each turn once the turn is committed (deltas follow segment by segment), so "
            "there is no delay to choose. Leave delay out.",
            param="session.audio.input.transcription.delay",
        )
