"""Noise for the turn set, deterministic (a seed per clip): white, pink, brown,
speech-shaped (the set's own long-term spectrum), mains hum, and babble (other utterances
of the set mixed). The noisy copy of each utterance has speech-shaped noise over the whole
stream (lead, pause and trailing part included) at ``noisy_snr_db`` below its speech."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from bench.turns.audio import (
    LEAD_MS,
    RATE,
    TRAILING_MS,
    Array,
    Clip,
    Speech,
    as_array,
    as_pcm,
    ms,
    rms,
    silence,
)
from bench.turns.labeled import TurnSet

FFT = 1024


def rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def long_term_spectrum(speech: list[bytes]) -> Array:
    """Mean power per rfft bin (FFT samples) over all the speech."""
    frames = [
        as_array(pcm)[i : i + FFT] for pcm in speech for i in range(0, len(pcm) // 2 - FFT, FFT)
    ]
    return np.asarray(np.mean([np.abs(np.fft.rfft(f * np.hanning(FFT))) ** 2 for f in frames], 0))


def shaped(gen: np.random.Generator, n: int, gain: Array) -> Array:
    """Gaussian noise of ``n`` samples, its spectrum shaped by ``gain`` (over 0..RATE/2)."""
    spectrum = np.fft.rfft(gen.standard_normal(n))
    grid = np.linspace(0, 1, len(gain))
    spectrum *= np.interp(np.linspace(0, 1, len(spectrum)), grid, gain)
    out = np.fft.irfft(spectrum, n)
    return np.asarray(out / (rms(out) or 1.0))


def colored(gen: np.random.Generator, n: int, power: float) -> Array:
    """1/f**power noise (0 white, 1 pink, 2 brown), unit RMS, above 20 Hz."""
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
    return shaped(gen, n, freqs[:: max(1, len(freqs) // 4096)] ** (-power / 2))


def hum(gen: np.random.Generator, n: int) -> Array:
    t = np.arange(n) / RATE
    phases = gen.uniform(0, 2 * np.pi, 8)
    out = sum(np.sin(2 * np.pi * 50 * (k + 1) * t + phases[k]) / (k + 1) for k in range(8))
    out = np.asarray(out) + 0.05 * gen.standard_normal(n)
    return np.asarray(out / rms(out))


def babble(gen: np.random.Generator, n: int, speech: list[bytes], talkers: int = 6) -> Array:
    out = np.zeros(n)
    for _ in range(talkers):
        line = np.concatenate(
            [as_array(speech[i]) for i in gen.permutation(len(speech))[: 2 + n // RATE]]
        )
        start = int(gen.integers(0, max(1, len(line) - n)))
        part = line[start : start + n]
        out[: len(part)] += part / (rms(part) or 1.0)
    return out / (rms(out) or 1.0)


class Noises:
    def __init__(self, turns: TurnSet, speech: list[bytes]) -> None:
        self.seed = turns.noise_seed
        self.snr_db = turns.noisy_snr_db
        self.speech = speech
        self.reference_rms = float(np.mean([rms(as_array(p)) for p in speech]))
        self.speech_gain = np.sqrt(long_term_spectrum(speech))

    def noise_only(self, item_id: str, label: str, level_db: float, seconds: float) -> Clip:
        gen, n = rng(self.seed, item_id), int(RATE * seconds)
        kinds = {
            "white": lambda: colored(gen, n, 0),
            "pink": lambda: colored(gen, n, 1),
            "brown": lambda: colored(gen, n, 2),
            "speech_shaped": lambda: shaped(gen, n, self.speech_gain),
            "hum": lambda: hum(gen, n),
            "babble": lambda: babble(gen, n, self.speech),
        }
        noise = kinds[label]() * self.reference_rms * 10 ** (level_db / 20)
        return Clip(item_id, "noise", label, False, as_pcm(noise) + silence(300), seconds * 1000)

    def noisy(self, clip: Clip) -> Clip:
        """``clip`` with speech-shaped noise ``snr_db`` below its speech, start to end."""
        samples = as_array(clip.pcm)
        speech = samples[np.abs(samples) > 300]
        noise = shaped(rng(self.seed, clip.id), len(samples), self.speech_gain)
        noise *= rms(speech) * 10 ** (-self.snr_db / 20)
        pcm = as_pcm(samples + noise)
        return dataclasses.replace(clip, pcm=pcm, noisy=True)


def build(turns: TurnSet, voice: Speech) -> list[Clip]:
    """Every clip of the set, clean and noisy, plus the noise-only ones."""
    clips: list[Clip] = []
    trailing = silence(TRAILING_MS)
    for item in turns.complete:
        pcm = voice.complete(item)
        end = LEAD_MS + ms(len(pcm))
        stream = silence(LEAD_MS) + pcm + trailing
        clips.append(Clip(item.id, "complete", item.label, False, stream, end, end, text=item.text))
    for p in turns.paused:
        first, second = voice.paused(p)
        pause_start = LEAD_MS + ms(len(first))
        resume = pause_start + p.pause_ms
        end = resume + ms(len(second))
        stream = silence(LEAD_MS) + first + silence(p.pause_ms) + second + silence(1000)
        clips.append(
            Clip(p.id, "paused", p.label, False, stream, end, end, pause_start, resume, p.text)
        )
    noises = Noises(turns, [voice.complete(item) for item in turns.complete])
    clips += [noises.noisy(c) for c in list(clips)]
    clips += [noises.noise_only(n.id, n.label, n.level_db, n.seconds) for n in turns.noise]
    return clips
