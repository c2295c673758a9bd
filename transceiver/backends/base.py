"""The interface between the session shell and a backend."""

from __future__ import annotations

from typing import Any, Protocol

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.effects import ResponseRequest, Transcribe


class BackendError(Exception):
    """A backend could not produce its output; the response fails, the session goes on."""


class ResponseSink(Protocol):
    """Where a backend writes one response. Each call may wait (backpressure)."""

    output_format: str  # the wire format of the response's audio (an AudioFormatType value)

    async def text(self, delta: str) -> None: ...
    async def transcript(self, delta: str) -> None: ...
    async def audio(
        self, pcm16: bytes, sample_rate_hz: int = AudioFormatType.PCM.sample_rate_hz
    ) -> None: ...
    async def function_call(
        self, name: str, arguments: str, call_id: str | None = None
    ) -> None: ...
    def mark(self, stage: str) -> None: ...


class TranscriptSink(Protocol):
    """Where a backend writes one input transcript, piece by piece (e.g. per segment)."""

    # The session includes "item.input_audio_transcription.logprobs": the engine should
    # give each piece's tokens as {"token", "logprob", "bytes"} (OpenAI's shape).
    wants_logprobs: bool

    async def delta(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None: ...


class Backend(Protocol):
    name: str

    def model_ids(self) -> list[str]: ...

    async def respond(
        self, request: ResponseRequest, sink: ResponseSink, state: dict[str, Any]
    ) -> str | None:
        """Write the response; return ``None``, or an incomplete reason.

        ``state`` is a dict the shell keeps per session for the backend's use.
        """
        ...

    async def transcribe(
        self, job: Transcribe, sink: TranscriptSink, state: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Return the transcript and its ``usage`` object."""
        ...

    async def aclose(self) -> None: ...
