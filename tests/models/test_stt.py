from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.audio import resample
from models.errors import SttError
from models.stt import WhisperStt, bundled_whisper_path, pcm16_to_float32
from models.synth import speech
from models.tts import PiperTts
from transceiver.turns import TurnModel

SENTENCE = "The quick brown fox jumps over the lazy dog."
KEY_WORDS = {"quick", "brown", "fox", "lazy", "dog"}


def heard(text: str) -> bool:
    """The key words, allowing one: piper's timing is random, and tiny.en mishears now and
    then ("the quit brown fox"), in either encoding window."""
    return len(KEY_WORDS - _words(text)) <= 1


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def speech_22k(piper_tts: PiperTts) -> bytes:
    return piper_tts.synthesize(SENTENCE)


@pytest.fixture(scope="module")
def speech_16k(speech_22k: bytes, piper_tts: PiperTts) -> bytes:
    return resample(speech_22k, piper_tts.sample_rate_hz, 16000)


def test_bundled_model_path_has_model_bin() -> None:
    with open(f"{bundled_whisper_path()}/model.bin", "rb"):
        pass


def test_pcm16_to_float32_scaling() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    audio = pcm16_to_float32(pcm + b"\x01")  # dangling odd byte is ignored
    assert audio.dtype == np.float32
    assert audio.tolist() == pytest.approx([0.0, 0.5, -1.0, 32767 / 32768])


def test_transcribes_synthesized_speech(whisper_stt: WhisperStt, speech_16k: bytes) -> None:
    result = whisper_stt.transcribe(speech_16k)
    assert heard(result.text), result.text
    assert result.language == "en"
    assert result.duration_s == pytest.approx(len(speech_16k) / 2 / 16000)


def test_resamples_other_rates_itself(
    whisper_stt: WhisperStt, speech_22k: bytes, piper_tts: PiperTts
) -> None:
    result = whisper_stt.transcribe(speech_22k, sample_rate_hz=piper_tts.sample_rate_hz)
    assert heard(result.text), result.text
    assert result.duration_s == pytest.approx(len(speech_22k) / 2 / piper_tts.sample_rate_hz)


def test_silence_gives_empty_text(whisper_stt: WhisperStt) -> None:
    assert whisper_stt.transcribe(bytes(2 * 32000)).text == ""
    hiss = np.random.default_rng(0).normal(0.0, 30.0, 32000).astype("<i2").tobytes()
    assert len(whisper_stt.transcribe(hiss).text) <= 10


@pytest.mark.parametrize("pcm", [b"", b"\x00", b"\x10\x00" * 800])
def test_empty_or_very_short_audio(whisper_stt: WhisperStt, pcm: bytes) -> None:
    assert whisper_stt.transcribe(pcm).text == ""


def test_concurrent_calls_share_one_model(whisper_stt: WhisperStt, speech_16k: bytes) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: whisper_stt.transcribe(speech_16k), range(3)))
    for result in results:
        assert heard(result.text), result.text


def test_invalid_sample_rate_raises(whisper_stt: WhisperStt, speech_16k: bytes) -> None:
    with pytest.raises(SttError):
        whisper_stt.transcribe(speech_16k, sample_rate_hz=-1)


def test_missing_model_raises_stt_error(tmp_path: object) -> None:
    with pytest.raises(SttError):
        WhisperStt(f"{tmp_path}")


@pytest.mark.parametrize(
    ("sentence", "key_words"),
    [
        ("What is the capital of France?", {"capital", "france"}),
        ("How many legs does a spider have?", {"legs", "spider"}),
        (
            "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
            {"quick", "brown", "fox", "lazy", "dog", "river", "sunny", "afternoon"},
        ),
    ],
)
def test_short_window_transcribes_like_the_full_window(
    whisper_stt: WhisperStt, piper_tts: PiperTts, sentence: str, key_words: set[str]
) -> None:
    pcm = piper_tts.synthesize(sentence)
    rate = piper_tts.sample_rate_hz
    assert whisper_stt.short_window
    short = whisper_stt.transcribe(pcm, sample_rate_hz=rate).text
    whisper_stt.short_window = False
    try:
        full = whisper_stt.transcribe(pcm, sample_rate_hz=rate).text
    finally:
        whisper_stt.short_window = True

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z']+", text.lower()))

    # tiny.en mishears a word of piper's speech now and then, in either window.
    assert len(key_words - words(short)) <= 1 and len(key_words - words(full)) <= 1
    assert len(words(short) ^ words(full)) <= 2  # at most one word differs


@pytest.mark.parametrize("short_window", [True, False])
def test_logprobs_spell_the_transcript_and_each_segment_is_reported(
    whisper_stt: WhisperStt, speech_16k: bytes, short_window: bool
) -> None:
    """Token log probabilities on the short window, word probabilities on the long path."""
    segments: list[tuple[str, int]] = []
    whisper_stt.short_window = short_window
    try:
        result = whisper_stt.transcribe(
            speech_16k, logprobs=True, on_segment=lambda text, lp: segments.append((text, len(lp)))
        )
    finally:
        whisper_stt.short_window = True
    assert heard(result.text)
    assert "".join(t.token for t in result.logprobs).strip() == result.text
    assert all(t.logprob <= 0 for t in result.logprobs)
    assert "".join(text for text, _ in segments).strip() == result.text
    assert sum(n for _, n in segments) == len(result.logprobs)
    assert whisper_stt.transcribe(speech_16k).logprobs == ()  # only when asked


def test_languages_pick_among_them_and_an_english_model_refuses_others(
    whisper_stt: WhisperStt, speech_16k: bytes
) -> None:
    assert heard(whisper_stt.transcribe(speech_16k, languages=["en", "fr"]).text)
    with pytest.raises(SttError, match="English-only, not for fr, de"):
        whisper_stt.transcribe(speech_16k, languages=["fr", "de"])


class _Unused:
    """An end-of-turn model and a words' scorer this test never calls."""

    def probability(self, pcm16: bytes, sample_rate_hz: int) -> float:
        raise AssertionError("not called")

    def log_probability(self, text: str) -> float:
        raise AssertionError("not called")


def test_turn_transcribe_hears_a_pause_in_the_wire_format(
    whisper_stt: WhisperStt, speech_22k: bytes, piper_tts: PiperTts
) -> None:
    # --turn-transcribe (transceiver/turns.py): the speech so far, 24 kHz PCM16 as the
    # client sent it, through this Whisper on the model's own thread.
    wire = resample(speech_22k, piper_tts.sample_rate_hz, 24_000)
    turns = TurnModel(_Unused(), text=_Unused(), stt=whisper_stt)
    try:
        assert turns.transcribes
        text, _, _ = asyncio.run(turns.transcribe(wire, "audio/pcm"))
    finally:
        turns.close()
    assert heard(text), text
    assert not TurnModel(_Unused(), stt=whisper_stt).transcribes  # no words' model: no STT


def test_a_pause_transcript_whisper_only_guesses_counts_as_unknown(
    whisper_stt: WhisperStt,
) -> None:
    # Sounds that are not speech (the load generator's synthetic voice) make Whisper say
    # "You" or the like, a guess (transceiver/turns.py GUESS_LOGPROB) that would read as an
    # unfinished message: it comes back empty, and the audio decides.
    buzz = speech("hello there I would like to book a table for two")
    assert whisper_stt.transcribe(resample(buzz, 24_000, 16_000)).text  # Whisper says something
    turns = TurnModel(_Unused(), text=_Unused(), stt=whisper_stt)
    try:
        text, _, _ = asyncio.run(turns.transcribe(buzz, "audio/pcm"))
    finally:
        turns.close()
    assert text == ""
