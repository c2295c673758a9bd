"""What a proxied session saw of its conversation: for the session-end log line and metrics,
and (its ``history``) for a fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transceiver.proxy.history import History

OUTPUT_AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_OUTPUT_DELTAS = OUTPUT_AUDIO_DELTAS | frozenset(
    {
        "response.output_text.delta",
        "response.text.delta",
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
        "response.function_call_arguments.delta",
    }
)


def is_output_delta(event_type: str | None) -> bool:
    return event_type in _OUTPUT_DELTAS


@dataclass
class Mirror:
    """What the proxy saw of the conversation: for the session-end log line and metrics."""

    history: History = field(default_factory=History)
    transcripts: int = 0
    responses: int = 0
    errors: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    turns: int = 0
    # When the current turn started: the end of the user's speech (speech_stopped), or the
    # response's creation for a turn without speech. Cleared by its first output delta.
    turn_start: float | None = None

    def observe(self, event: dict[str, Any], now: float) -> dict[str, int]:
        """Follow one upstream event; return the usage it reports (``response.done``)."""
        etype = event.get("type")
        self.history.observe(event)
        if etype in _OUTPUT_DELTAS:
            return {}
        if etype == "input_audio_buffer.speech_stopped":
            self.turn_start = now
        elif etype == "response.created" and self.turn_start is None:
            self.turn_start = now
        elif etype == "conversation.item.input_audio_transcription.completed":
            self.transcripts += 1
        elif etype == "response.done":
            self.responses += 1
            self.turn_start = None  # a response with no output ends its turn too
            usage = (event.get("response") or {}).get("usage") or {}
            reported = {
                name: usage[name]
                for name in ("input_tokens", "output_tokens", "total_tokens")
                if isinstance(usage.get(name), int) and not isinstance(usage.get(name), bool)
            }
            for name, count in reported.items():
                self.usage[name] = self.usage.get(name, 0) + count
            return reported
        elif etype == "error":
            self.errors += 1
        return {}

    def first_output(self, now: float) -> float | None:
        """Seconds from the turn's start to this, its first output delta (once a turn)."""
        if self.turn_start is None:
            return None
        seconds, self.turn_start = now - self.turn_start, None
        self.turns += 1
        return seconds

    def summary(self) -> dict[str, Any]:
        return {
            "items": self.history.items_seen,
            "transcripts": self.transcripts,
            "responses": self.responses,
            "errors": self.errors,
            "turns": self.turns,
            **self.usage,
        }
