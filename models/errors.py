"""Exception hierarchy for the model adapters (STT, LLM, TTS).

Third-party exceptions are translated at the adapter boundary, e.g.
``raise SttError("...") from exc``, so callers only ever need to catch
:class:`ModelError` (or one of its subclasses).
"""

from __future__ import annotations

__all__ = ["LlmError", "ModelError", "SttError", "TtsError"]


class ModelError(Exception):
    """Base class for every error raised by a model adapter."""


class SttError(ModelError):
    """Speech-to-text failure (model load or transcription)."""


class LlmError(ModelError):
    """Language-model failure (model load, HTTP/connection error, bad response)."""


class TtsError(ModelError):
    """Text-to-speech failure (voice load or synthesis)."""
