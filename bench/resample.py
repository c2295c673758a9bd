"""Resampling: ``np.interp`` (what models/audio.py uses) versus PyAV's libswresample.

``python -m bench resample`` measures, for each rate conversion the server makes:

- in-band fidelity: SNR of a multitone below both Nyquist rates against the exact tones
  at the target rate, for a whole buffer (SECONDS long) and for the same audio converted
  20 ms at a time without state (how the runner converts appends and TTS chunks);
- alias rejection (down-sampling only): how far tones between the target's and the
  source's Nyquist rate are suppressed (the energy that folds back into the band);
- cost: microseconds per 20 ms chunk and milliseconds per second of audio converted whole.

PyAV is measured both stateless (a fresh resampler per buffer, flushed) and stateful
(one resampler per stream, chunks fed in order), the way relay/webrtc.py uses it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt

from bench.stats import machine, write_section
from models.audio import pcm16_to_array, resample

CONVERSIONS = [(24_000, 16_000), (24_000, 8_000), (8_000, 24_000), (22_050, 24_000)]
CHUNK_MS = 20
SECONDS = 4.0
EDGE_MS = 50  # ignored at both ends of whole buffers (filter warm-up)

_F64 = npt.NDArray[np.float64]


def tones(
    freqs: _F64, phases: _F64, rate_hz: int, seconds: float, amp: float, delay_s: float = 0.0
) -> _F64:
    t = np.arange(int(seconds * rate_hz)) / rate_hz - delay_s
    return np.asarray(
        (amp * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(axis=0)
    )


def to_pcm(samples: _F64) -> bytes:
    return bytes(np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes())


def _frame(pcm: bytes, rate_hz: int, pts: int) -> av.AudioFrame:
    data = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
    frame.sample_rate = rate_hz
    frame.pts = pts
    return frame


def _drain(frames: list[av.AudioFrame]) -> bytes:
    return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames)


def pyav_stateless(pcm: bytes, src: int, dst: int) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    return _drain(resampler.resample(_frame(pcm, src, 0))) + _drain(resampler.resample(None))


def pyav_stream(chunks: list[bytes], src: int, dst: int) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)
    out, pts = [], 0
    for chunk in chunks:
        out.append(_drain(resampler.resample(_frame(chunk, src, pts))))
        pts += len(chunk) // 2
    out.append(_drain(resampler.resample(None)))
    return b"".join(out)


def snr_db(out: bytes, ideal: Callable[[float], _F64], dst: int, whole: bool) -> float:
    """SNR against the exact tones after the best constant delay (a delay is harmless):
    whole samples first, then sixteenths of a sample around the best."""
    got = pcm16_to_array(out).astype(np.float64)
    edge = dst * EDGE_MS // 1000 if whole else 1

    def snr(want: _F64, lag: int = 0) -> float:
        n = min(len(got), len(want))
        a = got[edge + max(lag, 0) : n - edge + min(lag, 0)]
        b = want[edge - min(lag, 0) : n - edge - max(lag, 0)]
        return float(10 * np.log10(np.sum(b**2) / max(float(np.sum((a - b) ** 2)), 1e-9)))

    exact = ideal(0.0)
    coarse = max(range(-40, 41), key=lambda lag: snr(exact, lag))
    return max(snr(ideal((coarse + f / 16) / dst)) for f in range(-16, 17))


def chunks_of(pcm: bytes, rate_hz: int) -> list[bytes]:
    step = rate_hz * CHUNK_MS // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def timed_us(fn: Callable[[], object], repeat: int) -> float:
    """Microseconds a call, the best of ``repeat`` (other processes share the cores)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1e6


Method = tuple[Callable[[bytes], bytes], Callable[[list[bytes]], bytes]]


def methods(src: int, dst: int) -> dict[str, Method]:
    return {
        "np.interp": (
            lambda b: resample(b, src, dst),
            lambda cs: b"".join(resample(c, src, dst) for c in cs),
        ),
        "PyAV stateless": (
            lambda b: pyav_stateless(b, src, dst),
            lambda cs: b"".join(pyav_stateless(c, src, dst) for c in cs),
        ),
        "PyAV per stream": (
            lambda b: pyav_stateless(b, src, dst),
            lambda cs: pyav_stream(cs, src, dst),
        ),
    }


def measure(src: int, dst: int) -> list[str]:
    rng = np.random.default_rng(7)
    phases = rng.uniform(0, 2 * np.pi, 20)
    bands = {
        "full": np.sort(rng.uniform(100, 0.9 * min(src, dst) / 2, 20)),
        "speech": np.sort(rng.uniform(100, 3400, 20)),
    }
    inputs = {name: to_pcm(tones(f, phases, src, SECONDS, 1000)) for name, f in bands.items()}
    alias = "-"
    if dst < src:
        high = np.linspace(dst / 2 * 1.05, src / 2 * 0.95, 10)
        noise = to_pcm(tones(high, phases[:10], src, SECONDS, 2000))
    rows = []
    for name, (whole_fn, chunked_fn) in methods(src, dst).items():
        cells = []
        for band, pcm in inputs.items():
            freqs = bands[band]

            def ideal(delay_s: float, freqs: _F64 = freqs) -> _F64:
                return tones(freqs, phases, dst, SECONDS, 1000, delay_s)

            whole = whole_fn(pcm)
            chunked = chunked_fn(chunks_of(pcm, src))
            cells.append(
                f"{snr_db(whole, ideal, dst, True):.1f} / {snr_db(chunked, ideal, dst, False):.1f}"
            )
        if dst < src:
            leaked = pcm16_to_array(whole_fn(noise)).astype(np.float64)
            source = pcm16_to_array(noise).astype(np.float64)
            ratio = np.sqrt(np.mean(leaked**2)) / np.sqrt(np.mean(source**2))
            alias = f"{-20 * np.log10(max(float(ratio), 1e-9)):.1f}"
        pieces = chunks_of(inputs["speech"], src)[:50]
        chunk_us = timed_us(functools.partial(chunked_fn, pieces), 7) / len(pieces)
        whole_ms = timed_us(functools.partial(whole_fn, inputs["speech"]), 7) / 1000 / SECONDS
        rows.append(
            f"| {src} -> {dst} | {name} | {cells[0]} | {cells[1]} | {alias} "
            f"| {chunk_us:.0f} | {whole_ms:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> str:
    rows = [
        "| conversion | method | SNR 0.1-0.9 Nyquist dB (whole / 20 ms chunks) "
        "| SNR 0.1-3.4 kHz dB (whole / 20 ms chunks) | alias rejection dB "
        "| us per 20 ms chunk (best of 7) | ms per second of audio, whole (best of 7) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for src, dst in CONVERSIONS:
        rows += measure(src, dst)
    body = (
        f"{machine()}\n\nCommand: `python -m bench resample`. Signals: 20 tones with random "
        "phases, either across the band both rates share or in the speech band, each compared "
        "with the exact tones at the target rate after the best constant delay. Chunks are "
        "converted independently (stateless), except by PyAV per stream, which keeps one "
        "resampler across a stream's chunks (relay/webrtc.py does that). Alias rejection "
        "(down-sampling): tones between the two Nyquist rates, input over output RMS.\n\n"
        + "\n".join(rows)
    )
    write_section("Resampling", body)
    return body


if __name__ == "__main__":
    main()
