"""Commands the core hands to its shell, drained with ``RealtimeSession.effects()``.

An audio format is its GA ``type`` string (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``);
the core puts ``AudioFormatType`` members there, and ``AudioFormatType(fmt)`` gives
anyone its rate and size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.config import Transcription, TurnDetection


@dataclass(frozen=True)
class ContextItem:
    """One conversation item as the backend sees it (GA shape, plus its audio)."""

    item: dict[str, Any]
    audio: bytes | None = None  # input or output audio, in ``audio_format``
    audio_format: str | None = None


@dataclass(frozen=True)
class ResponseRequest:
    """What a backend needs to generate one response."""

    response_id: str
    in_conversation: bool
    context: tuple[ContextItem, ...]
    instructions: str
    tools: tuple[dict[str, Any], ...]
    tool_choice: str | dict[str, Any]
    output_modalities: tuple[str, ...]
    output_format: str
    voice: str | dict[str, Any]  # a custom voice is {"id": ...}
    speed: float
    max_output_tokens: int | None
    metadata: dict[str, Any] | None
    model: str
    # "auto", "disabled", or {"type": "retention_ratio", "retention_ratio": ...,
    # "token_limits": {"post_instructions": ...} | None}: how the backend fits the
    # conversation into its context window.
    truncation: str | dict[str, Any] = "auto"
    temperature: float | None = None  # the beta dialect's; None: the backend's own
    # False: at most one function call in the reply (None: the backend's default, any).
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class StartResponse:
    request: ResponseRequest


@dataclass(frozen=True)
class CancelResponse:
    response_id: str
    reason: str  # "client_cancelled" | "turn_detected"


@dataclass(frozen=True)
class FeedVad:
    """Audio for the turn detector; ``start_ms`` is its place in session audio time."""

    audio: bytes
    audio_format: str
    start_ms: float
    turn_detection: TurnDetection


@dataclass(frozen=True)
class ResetVad:
    """Turn detection state must restart (buffer cleared or config changed)."""


@dataclass(frozen=True)
class Transcribe:
    item_id: str
    audio: bytes
    audio_format: str
    config: Transcription = field(default_factory=Transcription)


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


Effect = StartResponse | CancelResponse | FeedVad | ResetVad | Transcribe | Close
