"""Results pushed into a session by its shell: input transcripts and backend output.

A mixin of ``RealtimeSession``, kept apart so each file stays readable. Backend output
is tagged with its response id; output for a response that has ended is dropped, so
cancellation is deterministic: nothing of a cancelled response reaches the client.
"""

from __future__ import annotations

from typing import Any

from transceiver.protocol.config import SessionConfig
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.responses import Response, ResponseWriter

LOGPROBS = "item.input_audio_transcription.logprobs"


class SessionResults:
    closed: bool
    config: SessionConfig
    conversation: Conversation
    _responses: dict[str, Response]
    _writer: ResponseWriter
    _transcribing: set[str]
    assistant_spoke: bool

    def _emit(self, type: str, **fields: Any) -> None:
        raise NotImplementedError

    def _finish(
        self, resp: Response, status: str, details: dict[str, Any] | None, now_ms: float
    ) -> None:
        raise NotImplementedError

    # -- input transcription --------------------------------------------------------

    @property
    def wants_transcription_logprobs(self) -> bool:
        """``include: ["item.input_audio_transcription.logprobs"]`` is set."""
        return LOGPROBS in (self.config.include or ())

    def transcription_delta(
        self, item_id: str, delta: str, logprobs: list[dict[str, Any]] | None = None
    ) -> None:
        """One piece of an input transcript (a Whisper segment), with its tokens' log
        probabilities when the session includes them."""
        if item_id in self._transcribing and delta:
            extra = {"logprobs": logprobs or []} if self.wants_transcription_logprobs else {}
            self._emit(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=delta,
                **extra,
            )

    def transcription_completed(
        self,
        item_id: str,
        transcript: str,
        usage: dict[str, Any],
        language: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None:
        if item_id not in self._transcribing:
            return
        self._transcribing.discard(item_id)
        if item_id in self.conversation:
            for part in self.conversation.get(item_id).item.get("content", []):
                if part.get("type") == "input_audio":
                    part["transcript"] = transcript
        fields: dict[str, Any] = {"transcript": transcript, "usage": usage}
        if self.wants_transcription_logprobs:
            fields["logprobs"] = logprobs or []
        if language:
            fields["languages"] = [{"code": language}]
        self._emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            **fields,
        )

    def transcription_failed(
        self, item_id: str, message: str, code: str = "audio_unintelligible"
    ) -> None:
        if item_id not in self._transcribing:
            return
        self._transcribing.discard(item_id)
        self._emit(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=0,
            error={"type": "transcription_error", "code": code, "message": message, "param": None},
        )

    # -- backend output, tagged with the response id (stale output is dropped) -------

    def _active(self, response_id: str) -> Response | None:
        return None if self.closed else self._responses.get(response_id)

    def response_text_delta(self, response_id: str, delta: str) -> bool:
        resp = self._active(response_id)
        if resp is not None and delta:
            self._writer.text(resp, delta)
        return resp is not None

    def response_transcript_delta(self, response_id: str, delta: str) -> bool:
        resp = self._active(response_id)
        if resp is not None and delta:
            self._writer.transcript(resp, delta)
        return resp is not None

    def response_audio_delta(
        self, response_id: str, audio: bytes, now_ms: float | None = None
    ) -> bool:
        """``now_ms``: when the audio goes out, for the playback clock of a media session
        (``Response.play``)."""
        resp = self._active(response_id)
        if resp is not None and audio:
            self.assistant_spoke = True
            self._writer.audio(resp, audio)
            if now_ms is not None:
                resp.play(now_ms, resp.output_format.type.duration_ms(len(audio)))
        return resp is not None

    def response_function_call(
        self, response_id: str, name: str, arguments: str = "", call_id: str | None = None
    ) -> str | None:
        resp = self._active(response_id)
        if resp is None:
            return None
        call_id = self._writer.function_call(resp, name, call_id)
        if arguments:
            self._writer.arguments(resp, arguments)
        return call_id

    def response_arguments_delta(self, response_id: str, delta: str) -> bool:
        resp = self._active(response_id)
        if resp is not None and delta:
            self._writer.arguments(resp, delta)
        return resp is not None

    def response_finished(self, response_id: str, now_ms: float, reason: str | None = None) -> None:
        """Normal end; ``reason`` (e.g. ``max_output_tokens``) marks it incomplete."""
        resp = self._active(response_id)
        if resp is None:
            return
        if reason is None:
            self._finish(resp, "completed", None, now_ms)
        else:
            self._finish(resp, "incomplete", {"type": "incomplete", "reason": reason}, now_ms)

    def response_failed(
        self,
        response_id: str,
        message: str,
        now_ms: float,
        code: str = "server_error",
        error_type: str = "server_error",
    ) -> None:
        resp = self._active(response_id)
        if resp is None:
            return
        error = {"type": error_type, "code": code, "message": message}
        self._finish(resp, "failed", {"type": "failed", "error": error}, now_ms)
        self._emit("error", error={**error, "param": None, "event_id": None})
