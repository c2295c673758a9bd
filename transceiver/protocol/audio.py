"""Wire audio formats: the one place that knows their sample rates and sizes.

The GA API names a format by its ``type`` (``audio.input.format.type``): ``audio/pcm``
is 16-bit little-endian mono PCM at 24 kHz, ``audio/pcmu`` and ``audio/pcma`` are
G.711 mu-law and A-law at 8 kHz, one byte a sample
(https://platform.openai.com/docs/api-reference/realtime-client-events/session/update).
"""

from __future__ import annotations

import enum


class AudioFormatType(enum.StrEnum):
    """A wire audio format; a ``str`` (its GA ``type``), so effects may carry either."""

    PCM = "audio/pcm"
    PCMU = "audio/pcmu"
    PCMA = "audio/pcma"

    # Set once per member (a property computed them on every call: per frame, in the
    # append path): the rate, the bytes a sample, and bytes a millisecond (48 for PCM16 at
    # 24 kHz, 8 for G.711).
    sample_rate_hz: int
    sample_bytes: int
    bytes_per_ms: int

    def __init__(self, value: str) -> None:
        self.sample_rate_hz = 24_000 if value == "audio/pcm" else 8_000
        self.sample_bytes = 2 if value == "audio/pcm" else 1
        self.bytes_per_ms = self.sample_rate_hz * self.sample_bytes // 1000

    @classmethod
    def of(cls, value: str) -> AudioFormatType:
        """The member for ``value`` (a member or its ``type``): a dict lookup where the
        call ``AudioFormatType(value)`` goes through the enum machinery."""
        member = cls._value2member_map_.get(value)
        return member if member is not None else cls(value)  # type: ignore[return-value]

    def duration_ms(self, byte_count: int) -> float:
        """How long ``byte_count`` bytes of this format play."""
        return byte_count / self.bytes_per_ms

    def byte_count(self, ms: float) -> int:
        """The bytes of whole samples that play in ``ms`` milliseconds (``ms`` >= 0)."""
        count = int(ms * self.bytes_per_ms)
        return count - count % self.sample_bytes
