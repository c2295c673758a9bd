"""The turn set's audio: piper speech (cached WAVs), cut mid-sentence, noise, and the
stream-ready clips (PCM16 24 kHz mono, the wire's rate).

Speech is the bundled piper voice with noise_scale and noise_w 0, so the same text and
length_scale give the same samples on every run. A mid-sentence pause is made by cutting
the whole sentence, not by synthesizing the prefix alone: espeak ends a text with a
sentence-final fall (/tmp/smartturn/REPORT.md was this project's note on it; see also
tests/e2e/test_semantic_vad.py ``cut_before``).
"""

from __future__ import annotations

import hashlib
import wave
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.turns.labeled import Complete, Paused
from models.audio import resample

RATE = 24_000
CACHE = Path(__file__).with_name("wav")  # git-ignored
LEAD_MS = 300
TRAILING_MS = 9_500  # the longest wait measured: eagerness low's 8 s timeout, and a margin
LOUD = 300  # |sample| above this (about -40 dBFS) counts as speech when trimming
Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Clip:
    """One streamed clip: ``pcm`` is lead + content + trailing silence (or noise)."""

    id: str
    kind: str  # complete | paused | noise
    label: str
    noisy: bool
    pcm: bytes
    content_end_ms: float  # where the clip's content ends and the trailing part starts
    speech_end_ms: float | None = None  # end of the last word
    pause_start_ms: float | None = None  # paused: the first part's last word ends
    resume_ms: float | None = None  # paused: the second part's first word starts
    text: str = ""

    @property
    def name(self) -> str:
        return self.id + ("+noise" if self.noisy else "")

    @property
    def words_end_ms(self) -> float | None:
        """Where the words before the first end-of-turn question end: the utterance's, or
        a paused one's first part's."""
        return self.pause_start_ms if self.kind == "paused" else self.speech_end_ms


class Speech:
    """Piper synthesis of the set, with a WAV cache keyed by text, cut and voice."""

    def __init__(self) -> None:
        from piper import PiperVoice

        from models.tts import bundled_voice_path

        self.voice_path = bundled_voice_path()
        self._voice: Any = None
        self._loader = PiperVoice.load
        self.version = f"piper-tts {metadata.version('piper-tts')}"

    def _synth(self, text: str, length_scale: float) -> bytes:
        from piper import SynthesisConfig

        if self._voice is None:
            self._voice = self._loader(self.voice_path)
        config = SynthesisConfig(
            length_scale=self._voice.config.length_scale * length_scale,
            noise_scale=0.0,
            noise_w_scale=0.0,
        )
        pcm = b"".join(c.audio_int16_bytes for c in self._voice.synthesize(text, config))
        return resample(pcm, int(self._voice.config.sample_rate), RATE)

    def _cached(self, key: str, parts: int, make: Any) -> list[bytes]:
        digest = hashlib.sha256(f"{key}|{self.voice_path}|{self.version}".encode()).hexdigest()
        paths = [CACHE / f"{digest[:16]}-{i}.wav" for i in range(parts)]
        if all(p.is_file() for p in paths):
            return [read_wav(p) for p in paths]
        made: list[bytes] = make()
        CACHE.mkdir(exist_ok=True)
        for path, pcm in zip(paths, made, strict=True):
            write_wav(path, pcm)
        return made

    def complete(self, item: Complete) -> bytes:
        key = f"complete|{item.text}|{item.length_scale}"
        return self._cached(key, 1, lambda: [trim(self._synth(item.text, item.length_scale))])[0]

    def paused(self, item: Paused) -> tuple[bytes, bytes]:
        def make() -> list[bytes]:
            full = self._synth(item.text, item.length_scale)
            prefix = self._synth(item.cut_after, item.length_scale)
            cut = quietest_cut(full, prefix_end(full, prefix))
            return [trim(full[: 2 * cut]), trim(full[2 * cut :])]

        key = f"paused3|{item.text}|{item.cut_after}|{item.length_scale}"
        first, second = self._cached(key, 2, make)
        return first, second


def _features(pcm: bytes) -> Array:
    """Log power in 32 bands per 10 ms frame (25 ms window)."""
    samples = as_array(pcm)
    hop, win = RATE // 100, RATE // 40
    n = max(1, (len(samples) - win) // hop)
    frames = np.stack([samples[i * hop : i * hop + win] for i in range(n)]) * np.hanning(win)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.geomspace(3, power.shape[1] - 1, 33).astype(int)
    bands = np.stack([power[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    logs = np.log10(bands.T + 1.0)
    return np.asarray(logs - logs.mean(1, keepdims=True))


def prefix_end(full: bytes, prefix: bytes) -> int:
    """Where ``prefix`` (said alone) ends inside ``full``, in samples: an open-end DTW of
    their spectra, with steps (1,1), (1,2), (2,1) so one may run at half to twice the other's
    pace (a prefix said alone lengthens its last word)."""
    a, b = _features(trim(prefix)), _features(full)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(2))
    inf = np.inf
    acc = np.full((len(a), len(b)), inf)
    lead = np.flatnonzero(np.abs(as_array(full)) > LOUD)
    start = int(lead[0]) // (RATE // 100) if lead.size else 0
    acc[0, max(0, start - 5) : start + 6] = cost[0, max(0, start - 5) : start + 6]
    for i in range(1, len(a)):
        best = np.full(len(b), inf)
        best[1:] = acc[i - 1, :-1]
        best[2:] = np.minimum(best[2:], acc[i - 1, :-2])
        if i >= 2:
            best[1:] = np.minimum(best[1:], acc[i - 2, :-1])
        acc[i] = cost[i] + best
    return (int(np.argmin(acc[-1])) + 1) * (RATE // 100) + RATE // 80


def quietest_cut(full: bytes, near: int) -> int:
    """The sample where ``full`` is quietest over 20 ms within 40 ms of ``near``."""
    samples = as_array(full)
    frame = RATE // 50
    starts = range(
        max(0, near - RATE // 25 - frame // 2),
        max(1, min(len(samples) - frame, near + RATE // 25 - frame // 2)),
    )
    best = min(starts[::48], key=lambda s: float(np.mean(samples[s : s + frame] ** 2)))
    return best + frame // 2


def trim(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud.size else pcm


def quiet_spans(
    pcm: bytes, min_ms: float, start_ms: float = 0.0, end_ms: float | None = None
) -> list[tuple[float, float]]:
    """The (start, length) in ms of each run of 10 ms frames below ``LOUD`` (RMS) lasting
    at least ``min_ms`` between ``start_ms`` and ``end_ms``: the pauses inside speech."""
    frame = RATE // 100
    samples = as_array(pcm)
    first, last = int(start_ms / 10), len(samples) // frame
    if end_ms is not None:
        last = min(last, int(end_ms / 10))
    if last <= first:
        return []
    frames = samples[first * frame : last * frame].reshape(-1, frame)
    quiet = np.sqrt(np.mean(frames**2, axis=1)) < LOUD
    spans, run = [], None
    for i, q in enumerate([*quiet, False]):
        if q and run is None:
            run = i
        elif not q and run is not None:
            if (i - run) * 10 >= min_ms:
                spans.append(((first + run) * 10.0, (i - run) * 10.0))
            run = None
    return spans


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)


def as_array(pcm: bytes) -> Array:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def as_pcm(samples: Array) -> bytes:
    return bytes(np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes())


def rms(samples: Array) -> float:
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def ms(n_bytes: int) -> float:
    return n_bytes / 2 / RATE * 1000


def silence(duration_ms: float) -> bytes:
    return b"\0\0" * int(RATE * duration_ms / 1000)
