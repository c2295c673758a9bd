"""``python -m bench noise``: input noise reduction (models/noise.py) on noisy speech.

Speech: the first SENTENCES complete utterances of the turn set (bench/turns, piper with
its sampling noise off, so every run has the same samples), 24 kHz. Each is mixed with
pink, babble and speech-shaped noise (bench/turns/noise.py, seeded) at 5 and 10 dB SNR
(noise RMS against the speech's RMS over its loud samples), with 300 ms of noise before
and after. For no filter, RNNoise and DeepFilterNet3 (each as the server runs it: 20 ms
chunks of wire audio through ``InputNoiseFilter``):

- word error rate of Whisper tiny.en (models/stt.py) on the filtered clips (16 kHz);
- VAD false starts: ``speech_started`` of the server VAD (models/vad.py, the session's
  defaults) on the set's twelve 3 s noise-only clips (white, pink, brown, speech-shaped,
  hum at -10 and 0 dB against the speech level, babble at -20 and -10), and the noisy
  clips on which the VAD found speech at all;
- process CPU time per 20 ms chunk of 24 kHz audio (filter and resampling).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np

from bench.stats import machine, write_section
from bench.turns.audio import RATE, Speech, as_array, as_pcm, rms
from bench.turns.labeled import load
from bench.turns.noise import Noises, babble, colored, rng, shaped
from models.audio import resample, to_pcm16
from models.noise import InputNoiseFilter, NoiseType
from models.stt import WHISPER_SAMPLE_RATE_HZ, WhisperStt
from models.vad import VAD_RATE_HZ, ServerVad, SpeechStarted

COMMAND = "python -m bench noise"
SENTENCES = 8
SNRS_DB = (5.0, 10.0)
KINDS = ("pink", "babble", "speech_shaped")
PAD_S = 0.3
CHUNK = RATE * 20 // 1000 * 2  # bytes of a 20 ms chunk
Mix = tuple[str, str, float, bytes]  # text, noise kind, SNR, noisy audio
FILTERS: dict[str, NoiseType | None] = {
    "none": None,
    "near_field (RNNoise)": "near_field",
    "far_field (DeepFilterNet3)": "far_field",
}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions, insertions, deletions)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def noisy(speech: bytes, noise: np.ndarray, snr_db: float) -> bytes:
    samples = as_array(speech)
    pad = np.zeros(int(RATE * PAD_S))
    clean = np.concatenate((pad, samples, pad))
    level = rms(samples[np.abs(samples) > 300]) * 10 ** (-snr_db / 20)
    return as_pcm(clean + noise[: len(clean)] * level)


def run_filter(kind: NoiseType | None, pcm: bytes) -> tuple[bytes, float]:
    """The clip through a fresh session filter in 20 ms chunks; and the CPU seconds."""
    if kind is None:
        return pcm, 0.0
    engine = InputNoiseFilter()
    engine.prepare(kind, None)  # the runner builds it off the event loop (start_ms below)
    started = time.process_time()
    out = b"".join(
        engine.filter(pcm[i : i + CHUNK], "audio/pcm", kind, None)
        for i in range(0, len(pcm), CHUNK)
    )
    seconds = time.process_time() - started
    engine.close()
    return out, seconds


def vad_starts(pcm: bytes) -> int:
    vad = ServerVad()
    events = vad.feed(to_pcm16(pcm, "audio/pcm", VAD_RATE_HZ), 0.0)
    return sum(isinstance(e, SpeechStarted) for e in events)


def clips() -> tuple[list[Mix], list[bytes]]:
    """(text, noise kind, SNR, noisy audio) for each mix; and the noise-only clips."""
    turns = load()
    voice = Speech()
    items = turns.complete[:SENTENCES]
    speech = [voice.complete(item) for item in turns.complete]
    noises = Noises(turns, speech)
    makers: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
        "pink": lambda gen, n: colored(gen, n, 1),
        "babble": lambda gen, n: babble(gen, n, speech),
        "speech_shaped": lambda gen, n: shaped(gen, n, noises.speech_gain),
    }
    mixes: list[Mix] = []
    for item, pcm in zip(items, speech, strict=False):
        n = len(pcm) // 2 + 2 * int(RATE * PAD_S)
        for kind in KINDS:
            noise = makers[kind](rng(turns.noise_seed, f"bench-noise-{item.id}-{kind}"), n)
            mixes += [(item.text, kind, snr, noisy(pcm, noise, snr)) for snr in SNRS_DB]
    only = [noises.noise_only(n.id, n.label, n.level_db, n.seconds).pcm for n in turns.noise]
    return mixes, only


def measure(stt: WhisperStt, kind: NoiseType | None, mixes: list[Mix], only: list[bytes]) -> str:
    errors = {snr: 0 for snr in SNRS_DB}
    total = {snr: 0 for snr in SNRS_DB}
    cpu_s, chunks, found = 0.0, 0, 0
    for text, _, snr, pcm in mixes:
        out, seconds = run_filter(kind, pcm)
        cpu_s += seconds
        chunks += -(-len(pcm) // CHUNK)
        found += vad_starts(out) > 0
        heard = stt.transcribe(resample(out, RATE, WHISPER_SAMPLE_RATE_HZ)).text
        errors[snr] += word_errors(text, heard)
        total[snr] += len(words(text))
    false_starts = sum(vad_starts(run_filter(kind, pcm)[0]) for pcm in only)
    wer = " | ".join(f"{100 * errors[s] / total[s]:.1f} %" for s in SNRS_DB)
    cpu = f"{cpu_s / chunks * 1e6:.0f}" if kind is not None else "0"
    return f"{wer} | {false_starts} | {found}/{len(mixes)} | {cpu} | {start_ms(kind):.0f}"


def start_ms(kind: NoiseType | None) -> float:
    """Wall time to build a session's engine (once the library is loaded)."""
    if kind is None:
        return 0.0
    InputNoiseFilter().prepare(kind, None)
    started = time.perf_counter()
    engine = InputNoiseFilter()
    engine.prepare(kind, None)
    elapsed = (time.perf_counter() - started) * 1000
    engine.close()
    return elapsed


def main() -> str:
    mixes, only = clips()
    stt = WhisperStt()
    stt.transcribe(resample(mixes[0][3], RATE, WHISPER_SAMPLE_RATE_HZ))  # warm
    snr_heads = " | ".join(f"WER at {s:g} dB" for s in SNRS_DB)
    rows = [
        f"| filter | {snr_heads} | VAD false starts (noise only) | noisy clips with speech "
        "found | CPU us per 20 ms | engine start ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, kind in FILTERS.items():
        started = time.monotonic()
        rows.append(f"| {name} | {measure(stt, kind, mixes, only)} |")
        print(rows[-1], f"({time.monotonic() - started:.0f} s)", flush=True)
    body = (
        f"{machine()}\n\nCommand: `{COMMAND}`. {SENTENCES} piper sentences of the turn set, "
        f"each with {', '.join(KINDS)} noise at {' and '.join(f'{s:g}' for s in SNRS_DB)} dB "
        f"SNR ({len(mixes)} clips); Whisper tiny.en word error rate per SNR; server VAD "
        f"(defaults) on the set's {len(only)} noise-only clips; process CPU time per 20 ms "
        "chunk of 24 kHz audio, resampling included; wall time to build one session's "
        "engine.\n\n" + "\n".join(rows)
    )
    write_section("Input noise reduction", body)
    return body


if __name__ == "__main__":
    main()
