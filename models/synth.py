"""Synthetic speech: deterministic, speech-like PCM16 for the mock backend, the load
generator and the tests.

Each word is a pitched tone with its second and third harmonics, a slow pitch glide and
one to four syllable-shaped swells, then a short pause: energy, pitch and rhythm that a
voice activity detector (webrtcvad) classifies as speech. No randomness: the same words
give the same bytes on every run and every machine.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

RATE_HZ = 24_000
AMPLITUDE = 6000  # about -15 dBFS at the peaks: clearly speech, far from clipping
PAUSE = 0.15  # the silent end of each word, as a fraction of its duration


@functools.lru_cache(maxsize=4096)
def word_audio(word: str, duration_ms: int, rate_hz: int = RATE_HZ) -> bytes:
    """One word, ``duration_ms`` long (its pause included), mono PCM16 LE.

    The pitch (110-220 Hz, a speaking voice) comes from a hash of the word and its
    syllable count from its length, so different words sound different."""
    seed = int.from_bytes(hashlib.blake2s(word.lower().encode()).digest()[:4], "little")
    f0 = 110 + seed % 110
    n = rate_hz * duration_ms // 1000
    t = np.arange(n) / rate_hz
    glide = f0 * (1 + 0.08 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(glide) / rate_hz
    voice = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    syllables = max(1, min(4, len(word) // 3))
    envelope = np.sin(np.pi * syllables * t / max(t[-1], 1e-3)) ** 2 if n else t
    envelope[int(n * (1 - PAUSE)) :] = 0
    pcm: bytes = np.clip(voice * envelope * AMPLITUDE, -32768, 32767).astype("<i2").tobytes()
    return pcm


def speech(words: str, word_ms: int = 320, rate_hz: int = RATE_HZ) -> bytes:
    """``words`` (split on whitespace) spoken one every ``word_ms``: PCM16 LE at ``rate_hz``."""
    return b"".join(word_audio(word, word_ms, rate_hz) for word in words.split())
