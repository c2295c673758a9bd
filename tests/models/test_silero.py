"""Silero VAD (models/silero.py) as the server VAD's classifier, with the real model that
scripts/fetch-smart-turn installs, against webrtcvad on the same audio."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import resample
from models.silero import SileroFrames, SileroModel, VadModelError
from models.tts import PiperTts
from models.vad import VAD_RATE_HZ, FrameClassifier, ServerVad, SpeechStarted, SpeechStopped

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


@pytest.fixture(scope="module")
def speech(piper_tts: PiperTts) -> bytes:
    """A sentence at 8 kHz, with half a second of silence before it."""
    pcm = piper_tts.synthesize("Could you book a table for two at eight tonight?")
    return bytes(VAD_RATE_HZ) + resample(pcm, piper_tts.sample_rate_hz, VAD_RATE_HZ)


def noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(VAD_RATE_HZ * seconds)) * level


def pcm(samples: np.ndarray) -> bytes:
    return bytes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())


def events(audio: bytes, classifier: FrameClassifier | None) -> list[object]:
    vad = ServerVad(threshold=0.5, silence_duration_ms=500, classifier=classifier)
    return list(vad.feed(audio, 0.0))


def test_speech_is_voiced_and_steady_noise_is_not(model: SileroModel, speech: bytes) -> None:
    frames = [speech[i : i + 320] for i in range(0, len(speech) - 319, 320)]
    classifier = SileroFrames(model, 0.5)
    voiced = [classifier.voiced(frame) for frame in frames]
    assert not any(voiced[:20]) and sum(voiced) > len(frames) // 3  # silence first, then words
    hiss = pcm(noise(3, 2000))
    classifier = SileroFrames(model, 0.5)
    assert not any(classifier.voiced(hiss[i : i + 320]) for i in range(0, len(hiss), 320))


def test_under_noise_silero_ends_the_turn_where_webrtcvad_never_does(
    model: SileroModel, speech: bytes
) -> None:
    """Speech with white noise 10 dB below it from start to end, then 1.5 s of the noise."""
    clean = np.frombuffer(speech, dtype="<i2").astype(np.float64)
    speech_rms = float(np.sqrt(np.mean(clean[np.abs(clean) > 300] ** 2)))
    total = np.concatenate([clean, np.zeros(int(1.5 * VAD_RATE_HZ))])
    noisy = pcm(total + noise(len(total) / VAD_RATE_HZ, speech_rms / np.sqrt(10), seed=1))
    kinds = [type(e) for e in events(noisy, SileroFrames(model, 0.5))]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechStopped  # (pauses between)
    assert kinds.count(SpeechStarted) == 1
    with_webrtc = events(noisy, None)
    assert SpeechStopped not in [type(e) for e in with_webrtc]  # the noise reads as speech


def test_a_missing_model_says_how_to_install_it(tmp_path: object) -> None:
    with pytest.raises(VadModelError, match="fetch-smart-turn"):
        SileroModel(f"{tmp_path}/none.onnx")


def test_the_setting_defaults_to_webrtc_and_the_proxy_refuses_it_without_own_turns() -> None:
    from pydantic import ValidationError

    from transceiver.settings import TransceiverSettings

    assert TransceiverSettings(backend="local").vad == "webrtc"  # silero is opt-in
    assert TransceiverSettings(backend="mock", vad="silero").vad == "silero"  # real voices
    # The proxy detects speech itself only with --local-turn-detection or a fallback.
    with pytest.raises(ValidationError, match="--local-turn-detection or a --fallback"):
        TransceiverSettings(backend="openai", vad="silero")
    for own in ({"local_turn_detection": True}, {"fallback": "local"}, {"fallback": "mock"}):
        assert TransceiverSettings(backend="openai", vad="silero", **own).vad == "silero"
