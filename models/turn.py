"""End-of-turn detection: Smart Turn v3.2 (Daily, BSD-2-Clause) run with onnxruntime.

:class:`EndOfTurn` is the interface turn-taking code types against: the probability
that the speaker has finished, given the turn's audio so far (its trailing pause
included). :class:`SmartTurn` is the one engine. It computes its input exactly as
pipecat-ai 1.14.0 does (``pipecat/audio/turn/smart_turn/local_smart_turn_v3.py``),
which is how the model was trained:

1. mono 16 kHz float32 (PCM16 / 32768); other rates go through
   :func:`models.audio.resample`, the project's one resampler;
2. the LAST 8 s; shorter audio is zero-padded at the START, so the speech ends at the
   end of the window (padding the end instead moves the output by up to 0.9);
3. waveform normalisation over the padded window: ``(x - mean) / sqrt(var + 1e-7)``;
4. Whisper log-mel, 80 bands, n_fft 400, hop 160, 800 frames: faster-whisper's
   ``FeatureExtractor`` called with ``padding=0`` (its default appends 160 zeros);
5. ONNX input ``input_features`` float32 ``[1, 80, 800]``; the output (named
   ``logits``) is already a sigmoid probability that the turn is complete.

The model file is not on a model hub: ``scripts/fetch-smart-turn`` copies it out of the
pipecat-ai wheel on PyPI (checking its sha256) to :func:`bundled_turn_model_path`, next to
the wheel's license (README.md, "End-of-turn model").

Thread-safety: onnxruntime's ``InferenceSession.run`` and the feature extractor (numpy,
no state written per call) may be called from several threads at once, so one
:class:`SmartTurn` is shared by all sessions without a lock. Cost: 28-75 ms of CPU a
call with one intra-op thread, by the machine's phase (``python -m bench turn-model``); set
``OPENBLAS_NUM_THREADS=1``, or OpenBLAS threads spin through the mel matmul and double it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from models.audio import resample
from models.errors import ModelError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "MODEL_FILENAME",
    "EndOfTurn",
    "SmartTurn",
    "TurnError",
    "bundled_turn_model_path",
]

MODEL_FILENAME = "smart-turn-v3.2-cpu.onnx"
SAMPLE_RATE_HZ = 16_000
WINDOW_SAMPLES = 8 * SAMPLE_RATE_HZ  # the model sees exactly 8 s
N_MELS = 80
N_FFT = 400
HOP_LENGTH = 160
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 800
NORM_EPS = 1e-7  # transformers' zero_mean_unit_var_norm, as pipecat uses
INPUT_NAME = "input_features"


class TurnError(ModelError):
    """End-of-turn model failure (missing or unreadable model file, bad input)."""


class EndOfTurn(Protocol):
    """Scores whether a user's turn is complete."""

    def probability(self, pcm16: bytes, sample_rate_hz: int) -> float:
        """Probability in [0, 1] that the turn in ``pcm16`` (mono, up to now) is complete."""
        ...


def bundled_turn_model_path() -> Path:
    """Where ``scripts/fetch-smart-turn`` puts the model: ``<venv>/share/realtime-relay/``."""
    return Path(sys.prefix) / "share" / "realtime-relay" / MODEL_FILENAME


def _window(pcm16: bytes, sample_rate_hz: int) -> npt.NDArray[np.float32]:
    """PCM16 at any rate -> the model's 8 s, 16 kHz float32 window, normalised."""
    if sample_rate_hz <= 0:
        raise TurnError(f"invalid sample rate {sample_rate_hz} Hz")
    # Only the last 8 s (and a few samples) are resampled: the cost is bounded.
    tail_bytes = 2 * ((WINDOW_SAMPLES * sample_rate_hz) // SAMPLE_RATE_HZ + 4)
    tail = pcm16[: len(pcm16) - len(pcm16) % 2][-tail_bytes:]  # no dangling half sample
    samples = np.frombuffer(resample(tail, sample_rate_hz, SAMPLE_RATE_HZ), dtype="<i2")
    audio = samples[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0  # as pipecat: / 32768
    x = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    if audio.size:
        x[-audio.size :] = audio  # zeros at the START, the speech at the end
    normalised: npt.NDArray[np.float32] = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
    return normalised.astype(np.float32)


class SmartTurn:
    """Smart Turn v3.2 (int8 ONNX, 8.7 MB), loaded once; ``probability`` is thread-safe."""

    def __init__(self, model_path: str | Path | None = None, *, intra_op_threads: int = 1) -> None:
        """``model_path``: the ``.onnx`` file; None = :func:`bundled_turn_model_path`."""
        path = Path(model_path) if model_path is not None else bundled_turn_model_path()
        if not path.is_file():
            hint = " (run scripts/fetch-smart-turn, or make install)" if model_path is None else ""
            raise TurnError(f"end-of-turn model not found: {path}{hint}")
        if intra_op_threads < 0:
            raise TurnError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        try:
            import onnxruntime as ort
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise TurnError(
                "onnxruntime and faster-whisper (the `local` extra) are needed"
            ) from exc
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: InferenceSession = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise TurnError(f"cannot load end-of-turn model {path}: {exc}") from exc
        inputs = [i.name for i in self._session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise TurnError(f"{path} is not a Smart Turn model (inputs {inputs})")
        self.path = path
        # chunk_length only sets attributes __call__ does not use: we pad to 8 s ourselves.
        self._features: Any = FeatureExtractor(
            feature_size=N_MELS,
            sampling_rate=SAMPLE_RATE_HZ,
            hop_length=HOP_LENGTH,
            chunk_length=WINDOW_SAMPLES // SAMPLE_RATE_HZ,
            n_fft=N_FFT,
        )

    def features(self, pcm16: bytes, sample_rate_hz: int) -> npt.NDArray[np.float32]:
        """The model's input for ``pcm16``: float32 log-mel ``[80, 800]``."""
        mel = np.asarray(self._features(_window(pcm16, sample_rate_hz), padding=0))
        if mel.shape != (N_MELS, N_FRAMES):
            raise TurnError(f"unexpected feature shape {mel.shape}")
        return mel.astype(np.float32)

    def probability(self, pcm16: bytes, sample_rate_hz: int) -> float:
        """Probability in [0, 1] that the turn in ``pcm16`` (mono PCM16) is complete.

        Call it once speech was heard and a short pause follows: pure silence and noise
        score "complete" too (README.md, "End-of-turn model").
        """
        features = self.features(pcm16, sample_rate_hz)[np.newaxis]
        try:
            outputs = self._session.run(None, {INPUT_NAME: features})
        except Exception as exc:  # onnxruntime's own exception types
            raise TurnError(f"end-of-turn model failed: {exc}") from exc
        return float(np.clip(np.asarray(outputs[0]).reshape(-1)[0], 0.0, 1.0))
