from __future__ import annotations

import numpy as np
import pytest

from models.errors import TtsError
from models.tts import PiperTts, bundled_voice_path

HELLO = "Hello, how are you today?"


def _seconds(pcm: bytes, rate: int) -> float:
    return len(pcm) / 2 / rate


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def test_bundled_voice_path_points_at_onnx_with_config() -> None:
    path = bundled_voice_path()
    assert path.endswith(".onnx")
    with open(path + ".json", encoding="utf-8"):
        pass


def test_sample_rate_from_voice_config(piper_tts: PiperTts) -> None:
    assert piper_tts.sample_rate_hz == 22050


def test_synthesize_produces_plausible_speech(piper_tts: PiperTts) -> None:
    pcm = piper_tts.synthesize(HELLO)
    assert len(pcm) % 2 == 0
    assert 0.8 < _seconds(pcm, piper_tts.sample_rate_hz) < 4.0
    assert _rms(pcm) > 500  # far above silence (int16 full scale is 32767)


def test_stream_yields_chunks_of_similar_total_length(piper_tts: PiperTts) -> None:
    text = "Hello there. This is the second sentence. And here is a third one."
    chunks = list(piper_tts.synthesize_stream(text))
    assert len(chunks) >= 2  # one chunk per sentence
    assert all(chunk and len(chunk) % 2 == 0 for chunk in chunks)
    streamed = _seconds(b"".join(chunks), piper_tts.sample_rate_hz)
    whole = _seconds(piper_tts.synthesize(text), piper_tts.sample_rate_hz)
    assert streamed == pytest.approx(whole, rel=0.25)


def test_varied_false_repeats_itself_and_the_default_does_not(piper_tts: PiperTts) -> None:
    assert not piper_tts.varied  # the fixture's voice, so that model tests are reproducible
    assert piper_tts.synthesize(HELLO) == piper_tts.synthesize(HELLO)
    varied = PiperTts(piper_tts.voice_path)
    assert varied.synthesize(HELLO) != varied.synthesize(HELLO)  # piper samples noise


def test_stream_can_be_abandoned_early(piper_tts: PiperTts) -> None:
    stream = piper_tts.synthesize_stream("First sentence. Second sentence. Third sentence.")
    assert next(stream)
    stream.close()
    assert piper_tts.synthesize("Still working.")


def test_speed_two_is_shorter(piper_tts: PiperTts) -> None:
    normal = _seconds(piper_tts.synthesize(HELLO), piper_tts.sample_rate_hz)
    fast = _seconds(piper_tts.synthesize(HELLO, speed=2.0), piper_tts.sample_rate_hz)
    assert fast < 0.75 * normal


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_gives_no_audio(piper_tts: PiperTts, text: str) -> None:
    assert piper_tts.synthesize(text) == b""
    assert list(piper_tts.synthesize_stream(text)) == []


def test_invalid_speed_raises(piper_tts: PiperTts) -> None:
    with pytest.raises(TtsError):
        piper_tts.synthesize(HELLO, speed=0.0)


def test_missing_voice_raises_tts_error(tmp_path: object) -> None:
    with pytest.raises(TtsError):
        PiperTts(f"{tmp_path}/missing.onnx")
