"""Audio conversion: resampling, G.711 mu-law / A-law, wire formats <-> PCM16 24 kHz.

All PCM is mono, signed 16-bit little-endian.

:func:`resample` (and :func:`resample_array` for float samples) is the project's one
resampler; the relay, which may not import this package, uses PyAV in relay/webrtc.py.
It is stateless: linear interpolation (``np.interp``), or the mean of each block for
integer down-ratios (24 kHz -> 8 kHz). Measured against PyAV's libswresample with
``python -m bench resample`` (bench/results.md, "Resampling"):

- quality: libswresample is far cleaner, 60-80 dB SNR on whole buffers against 11-30 dB
  here in the speech band (30 dB for 24 -> 16 kHz, what Whisper gets), and 32 dB of
  alias rejection against 3-10 dB;
- cost on whole buffers: the same, about 0.2 ms per second of audio;
- cost on 20 ms chunks, which is how the runner converts every append (for the VAD) and
  every TTS chunk, one at a time and without state: a fresh libswresample costs
  250-320 us a chunk against 17-19 us here, for each session and each chunk, and its
  filter edges bring it down to 26-53 dB; chunk by chunk, this one measures the same as
  on the whole buffer.

So the one resampler is this stateless function: the per-chunk path, taken by every
session, decides, and whole buffers (the utterance for Whisper, test audio) use it too
rather than a second implementation; the VAD and Whisper work well at its quality
(tests/models, tests/local). A caller that keeps one libswresample per stream gets
50-77 dB for about 40 us a chunk, as relay/webrtc.py does.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt

WIRE_RATE_HZ = 24_000
G711_RATE_HZ = 8_000

_I16 = npt.NDArray[np.int16]
_F64 = npt.NDArray[np.float64]


def _ulaw_decode_table() -> _I16:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    values = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return values.astype(np.int16)


def _alaw_decode_table() -> _I16:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    values = np.where(sign != 0, magnitude, -magnitude)
    return values.astype(np.int16)


_ULAW_DECODE = _ulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()


def _encode_table(decode: _I16) -> npt.NDArray[np.uint8]:
    # Nearest code for every 16-bit value: built once (64 Ki entries).
    order = np.argsort(decode, kind="stable")
    sorted_values = decode[order].astype(np.int32)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    index = np.clip(np.searchsorted(sorted_values, samples), 1, 255)
    left = sorted_values[index - 1]
    right = sorted_values[index]
    nearest = np.where(samples - left <= right - samples, index - 1, index)
    return order[nearest].astype(np.uint8)


_ULAW_ENCODE = _encode_table(_ULAW_DECODE)
_ALAW_ENCODE = _encode_table(_ALAW_DECODE)


def pcm16_to_array(pcm16: bytes) -> _I16:
    """The samples of PCM16 bytes (a trailing odd byte ignored), as a writable array."""
    return _pcm16_view(pcm16).astype(np.int16)


def _pcm16_view(pcm16: bytes) -> _I16:
    """The samples of PCM16 bytes, read-only, without a copy where the length is even."""
    usable = len(pcm16) - len(pcm16) % 2
    view: _I16 = np.frombuffer(pcm16 if usable == len(pcm16) else pcm16[:usable], dtype="<i2")
    return view


def ulaw_decode(data: bytes) -> bytes:
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_decode(data: bytes) -> bytes:
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def ulaw_encode(pcm16: bytes) -> bytes:
    samples = pcm16_to_array(pcm16).astype(np.int32) + 32768
    return _ULAW_ENCODE[samples].tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    samples = pcm16_to_array(pcm16).astype(np.int32) + 32768
    return _ALAW_ENCODE[samples].tobytes()


def resample_array(samples: npt.NDArray[Any], src_rate_hz: int, dst_rate_hz: int) -> _F64:
    """Resample mono samples (any numeric dtype) to float64 at ``dst_rate_hz``.

    The output has ``round(len * dst / src)`` samples (whole blocks only, for integer
    down-ratios); the same rate returns the input as float64.
    """
    if src_rate_hz <= 0 or dst_rate_hz <= 0:
        raise ValueError(f"invalid sample rates {src_rate_hz} -> {dst_rate_hz}")
    values = np.asarray(samples, dtype=np.float64)
    if src_rate_hz == dst_rate_hz or not values.size:
        return values
    if src_rate_hz % dst_rate_hz == 0:
        step = src_rate_hz // dst_rate_hz
        usable = len(values) - len(values) % step
        # The mean of each block; np.add.reduce skips np.mean's Python wrapper, which is
        # most of the cost of a 20 ms frame.
        block_sums: _F64 = np.add.reduce(values[:usable].reshape(-1, step), axis=1)
        return block_sums / step
    n_out = int(round(len(values) * dst_rate_hz / src_rate_hz))
    positions = np.arange(n_out, dtype=np.float64) * (src_rate_hz / dst_rate_hz)
    return np.interp(positions, np.arange(len(values)), values)


def resample(pcm16: bytes, src_rate_hz: int, dst_rate_hz: int) -> bytes:
    """PCM16 at ``src_rate_hz`` -> PCM16 at ``dst_rate_hz`` (see the module docstring)."""
    if src_rate_hz == dst_rate_hz or not pcm16:
        return pcm16[: len(pcm16) - len(pcm16) % 2]
    if 0 < dst_rate_hz < src_rate_hz and src_rate_hz % dst_rate_hz == 0:
        step = src_rate_hz // dst_rate_hz
        if step % 2 == 1 and step <= _MEANS_MAX_STEP:
            return _odd_block_means(pcm16, step)
    out = resample_array(_pcm16_view(pcm16), src_rate_hz, dst_rate_hz)
    # Block means and linear interpolation stay within the input's range: no clipping.
    pcm: bytes = np.rint(out).astype("<i2").tobytes()
    return pcm


# Odd steps up to this take :func:`_odd_block_means`: there its float64 dot product is
# within step**2 * 32768 * 2**-53 (4e-6 at 1023) of each block's exact mean, far from the
# half-way points that rounding would have to cross (an odd block's mean is at least
# 1 / (2 * step) from them, 5e-4 at 1023).
_MEANS_MAX_STEP = 1023


@functools.cache
def _mean_weights(step: int) -> _F64:
    weights: _F64 = np.full(step, 1 / step)
    weights.flags.writeable = False
    return weights


def _odd_block_means(pcm16: bytes, step: int) -> bytes:
    """:func:`resample`'s block means for an odd ``step`` (24 kHz -> 8 kHz, the speech
    detector's input on every append): each block's samples times ``1 / step``, summed in
    one float64 dot product straight from the int16 samples, then rounded; the same samples
    as the float path's ``rint(sum / step)``, since an odd block's mean is never half-way
    between two integers (see ``_MEANS_MAX_STEP``), in 5 numpy calls where slicing and
    summing in integers took 10 (3.0 against 4.5 us a 20 ms frame on a 2-core EPYC VM)."""
    blocks = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2 // step * step)
    means: _F64 = np.dot(blocks.reshape(-1, step), _mean_weights(step))
    pcm: bytes = np.rint(means).astype("<i2").tobytes()
    return pcm


def to_pcm16(data: bytes, audio_format: str, rate_hz: int = WIRE_RATE_HZ) -> bytes:
    """Decode a wire format (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``) to PCM16."""
    if audio_format == "audio/pcmu":
        return resample(ulaw_decode(data), G711_RATE_HZ, rate_hz)
    if audio_format == "audio/pcma":
        return resample(alaw_decode(data), G711_RATE_HZ, rate_hz)
    return resample(data, WIRE_RATE_HZ, rate_hz)


def from_pcm16(pcm16: bytes, audio_format: str, rate_hz: int = WIRE_RATE_HZ) -> bytes:
    """Encode PCM16 at ``rate_hz`` to a wire format."""
    if audio_format == "audio/pcmu":
        return ulaw_encode(resample(pcm16, rate_hz, G711_RATE_HZ))
    if audio_format == "audio/pcma":
        return alaw_encode(resample(pcm16, rate_hz, G711_RATE_HZ))
    return resample(pcm16, rate_hz, WIRE_RATE_HZ)


def rms(pcm16: bytes) -> float:
    samples = _pcm16_view(pcm16).astype(np.float64)
    return math.sqrt(float(samples.dot(samples)) / len(samples)) if len(samples) else 0.0
