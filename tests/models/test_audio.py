"""models/audio.py (the one resampler, G.711) and models/synth.py (synthetic speech)."""

from __future__ import annotations

import numpy as np
import pytest
import webrtcvad
from hypothesis import given
from hypothesis import strategies as st

from models.audio import (
    alaw_decode,
    alaw_encode,
    from_pcm16,
    pcm16_to_array,
    resample,
    resample_array,
    rms,
    to_pcm16,
    ulaw_decode,
    ulaw_encode,
)
from models.synth import speech, word_audio


def tone(hz: float, rate_hz: int, seconds: float = 1.0, amp: float = 8000) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return bytes((amp * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())


@pytest.mark.parametrize(
    ("src", "dst"), [(24000, 16000), (24000, 8000), (8000, 24000), (22050, 24000)]
)
def test_resample_keeps_length_and_a_speech_band_tone(src: int, dst: int) -> None:
    out = pcm16_to_array(resample(tone(440, src), src, dst)).astype(np.float64)
    assert out.size == dst
    # Block means (integer down-ratios) lag by a fraction of an input sample.
    lag = (src // dst - 1) / 2 / src if src % dst == 0 else 0.0
    expected = 8000 * np.sin(2 * np.pi * 440 * (np.arange(dst) / dst + lag))
    inner = slice(0, dst - dst // src - 1)  # up-sampling holds the last input sample
    assert np.max(np.abs(out - expected)[inner]) < 8000 * 0.05


def test_resample_same_rate_and_odd_bytes() -> None:
    assert resample(b"\x01\x02\x03", 24000, 24000) == b"\x01\x02"
    assert resample(b"", 24000, 16000) == b""
    samples = np.arange(5, dtype=np.float32)
    assert resample_array(samples, 16000, 16000).tolist() == samples.tolist()
    with pytest.raises(ValueError, match="invalid sample rates"):
        resample_array(samples, 0, 16000)


def test_resample_chunk_by_chunk_equals_whole_for_whole_ratios() -> None:
    """The runner converts every 20 ms append on its own: no seams at chunk edges."""
    pcm = speech("chunked audio is the same")
    chunks = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    for dst in (16000, 8000):
        assert b"".join(resample(c, 24000, dst) for c in chunks) == resample(pcm, 24000, dst)


@given(
    samples=st.lists(st.integers(-32768, 32767), max_size=200),
    odd_byte=st.booleans(),
    rates=st.sampled_from(
        [(24000, 8000), (48000, 16000), (40000, 8000), (24000, 24000 // 7), (65539, 1)]
    ),
)
def test_odd_block_means_are_the_float_paths_samples(
    samples: list[int], odd_byte: bool, rates: tuple[int, int]
) -> None:
    """Integer down-ratios by an odd factor (24 kHz -> 8 kHz on every append) are summed in
    integers: the same samples as the float path's rounded means."""
    src, dst = rates
    pcm = np.array(samples, dtype="<i2").tobytes() + (b"\x01" if odd_byte else b"")
    floats = resample_array(pcm16_to_array(pcm), src, dst)
    assert resample(pcm, src, dst) == np.rint(floats).astype("<i2").tobytes()


@pytest.mark.parametrize("step", [3, 5, 1021, 1023])
def test_odd_block_means_round_exactly_at_the_extremes(step: int) -> None:
    """Blocks of full-scale samples, where a float sum drifts most: each mean is rounded to
    the nearest integer, exactly as integer arithmetic has it."""
    rng = np.random.default_rng(step)
    for choices in ([-32768, 32767], [-32768, -32767, 32766, 32767], [-1, 0, 1, 32767]):
        samples = rng.choice(choices, size=step * 64)
        exact = (samples.reshape(-1, step).sum(axis=1) + step // 2) // step
        got = resample(samples.astype("<i2").tobytes(), step * 100, 100)
        assert np.array_equal(np.frombuffer(got, dtype="<i2"), exact)


def test_resample_array_float_in_float_out() -> None:
    audio = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000).astype(np.float32)
    out = resample_array(audio, 24000, 16000)
    assert out.dtype == np.float64 and out.size == 16000
    expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.max(np.abs(out - expected)) < 0.05


@pytest.mark.parametrize(
    ("encode", "decode", "fmt"),
    [(ulaw_encode, ulaw_decode, "audio/pcmu"), (alaw_encode, alaw_decode, "audio/pcma")],
)
def test_g711_round_trip(encode: object, decode: object, fmt: str) -> None:
    pcm = tone(440, 8000)
    back = decode(encode(pcm))  # type: ignore[operator]
    error = pcm16_to_array(back).astype(np.int32) - pcm16_to_array(pcm).astype(np.int32)
    assert rms(pcm) > 5000 and np.max(np.abs(error)) < 8000 * 0.04  # G.711: ~3% steps
    wire = from_pcm16(tone(440, 24000), fmt)
    assert len(wire) == 8000  # one byte a sample at 8 kHz
    assert len(to_pcm16(wire, fmt)) == 2 * 24000


def test_word_audio_is_deterministic_and_as_long_as_asked() -> None:
    assert word_audio("hello", 320) == word_audio("Hello", 320)
    assert word_audio("hello", 320) != word_audio("world", 320)
    assert len(word_audio("hello", 320)) == 2 * 24 * 320
    assert len(word_audio("hello", 320, 16000)) == 2 * 16 * 320
    assert word_audio("x", 0) == b""
    pcm = speech("one two three", word_ms=200)
    assert len(pcm) == 3 * 2 * 24 * 200
    # Each word ends in a pause between words.
    tail = pcm16_to_array(word_audio("hello", 320))[-24 * 40 :]
    assert not tail.any()


def test_synthetic_speech_is_speech_to_a_vad() -> None:
    vad = webrtcvad.Vad(3)  # the most aggressive mode: least eager to call sound speech
    pcm = resample(speech("hello there how are you today"), 24000, 16000)
    frames = [pcm[i : i + 640] for i in range(0, len(pcm) - 639, 640)]  # 20 ms at 16 kHz
    voiced = sum(vad.is_speech(frame, 16000) for frame in frames)
    assert voiced > 0.6 * len(frames)
    assert not webrtcvad.Vad(3).is_speech(b"\0" * 640, 16000)
