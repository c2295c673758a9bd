"""Silero VAD (v5, ONNX) as the server VAD's frame classifier: speech probability per
32 ms of 8 kHz audio, from a small recurrent network run on onnxruntime, gating webrtcvad.

webrtcvad (models/vad.py's default) calls most steady noise speech: on the turn set's
noise-only clips it starts speech on every one, and under noise at 10 dB SNR it never hears
a pause. Silero tells speech from noise (``python -m bench vad``), at about 170 us of CPU
per 32 ms chunk: worth it for a voice pipeline, too much for a mock serving hundreds of load
test sessions, so the transceiver's ``--vad`` picks (default: silero on the local backend).

The model file comes from the pipecat-ai wheel, installed with the end-of-turn model by
``scripts/fetch-smart-turn`` (MIT licence, Silero Team). One :class:`SileroModel` (one
onnxruntime session, whose ``run`` is thread-safe) serves every session; each session's
:class:`SileroFrames` holds its own recurrent state.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import ModelError
from models.vad import WebRtcFrames

MODEL_FILENAME = "silero_vad.onnx"
RATE_HZ = 8_000
CHUNK = 256  # samples of a model step at 8 kHz (32 ms)
CONTEXT = 32  # samples of the previous chunk the model sees before each one
_STATE_SHAPE = (2, 1, 128)


class VadModelError(ModelError):
    """The Silero VAD model cannot be loaded or run."""


def bundled_vad_model_path() -> Path:
    """Where ``scripts/fetch-smart-turn`` puts it: ``<venv>/share/realtime-relay/``."""
    return Path(sys.prefix) / "share" / "realtime-relay" / MODEL_FILENAME


class SileroModel:
    """The loaded network, shared by every session of a transceiver."""

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime

        self.path = Path(path) if path else bundled_vad_model_path()
        if not self.path.is_file():
            raise VadModelError(
                f"Silero VAD model not found at {self.path}: run scripts/fetch-smart-turn"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a 32 ms step is too small to split
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise VadModelError(f"cannot load {self.path}: {exc}") from exc
        self._rate = np.array(RATE_HZ, dtype=np.int64)

    def step(
        self, chunk: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """Speech probability of ``chunk`` (CONTEXT + CHUNK samples in [-1, 1)) and the
        next recurrent state."""
        outputs: Any = self._session.run(
            None, {"input": chunk[None, :], "state": state, "sr": self._rate}
        )
        return float(outputs[0][0][0]), outputs[1]


class SileroFrames:
    """One session's frame classifier: ``voiced(frame)`` for each 20 ms of PCM16 at 8 kHz.

    Each frame is buffered; every full 32 ms chunk runs the model. A frame is speech when
    the latest probability reaches ``threshold`` (the Realtime ``server_vad.threshold``:
    0-1, higher needs clearer speech) AND webrtcvad says so too: Silero tells speech from
    noise, but its probability decays for about 100 ms after the last word, while
    webrtcvad marks the end of a word at once (and under noise, where webrtcvad hears
    speech everywhere, Silero alone decides). ``python -m bench vad`` measures the three.
    """

    def __init__(self, model: SileroModel, threshold: float) -> None:
        self._model = model
        self._webrtc = WebRtcFrames(threshold)
        self._threshold = threshold
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.probability = 0.0

    def voiced(self, frame: bytes) -> bool:
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate((self._pending, samples))
        while self._pending.size >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            window = np.concatenate((self._context, chunk))
            self.probability, self._state = self._model.step(window, self._state)
            self._context = chunk[-CONTEXT:]
        return self._webrtc.voiced(frame) and self.probability >= self._threshold
