"""The end-of-turn model (models/turn.py, Smart Turn v3.2): load time and cost per call.

``python -m bench turn-model`` synthesizes complete and cut-off sentences with the bundled
piper voice (22050 Hz, resampled by the model's own path, 100 ms of trailing silence),
then, for 1 and 2 onnxruntime intra-op threads: the load (``SmartTurn()``), the first call,
and CALLS timed calls cycling over the clips, in wall time and in process CPU time (the
number that counts on a shared machine). It also prints OPENBLAS_NUM_THREADS and the load
average: with OpenBLAS threads free, the mel matmul wakes them and they spin, doubling
the CPU per call (README.md, "End-of-turn model"). Last, how the model's answer depends on
the silence after the words: on the labeled turn set's clean clips (bench/turns/), each cut
at the end of its words (complete) or of its first half (mid-sentence pause) plus 100-400
ms of its own silence, how many score above 0.5 (why transceiver/turns.py asks at 200 ms).
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench.stats import machine, percentile, write_section
from models.tts import PiperTts
from models.turn import SmartTurn

CALLS = 100
WARMUP = 3
SENTENCES = [
    ("I would like to order a pizza with extra cheese.", "I would like to order a pizza with"),
    ("Please bring the cups and the plates.", "Please bring the cups and the"),
    ("I want to go to the train station.", "I want to go to the"),
    ("Turn off the lights in the kitchen.", "Turn off the lights in the"),
]
TRAILING_SILENCE_S = 0.1
TRAILS_MS = (100, 150, 200, 300, 400)


def clips(tts: PiperTts) -> list[tuple[str, bytes]]:
    out = []
    silence = bytes(2 * int(tts.sample_rate_hz * TRAILING_SILENCE_S))
    for pair in SENTENCES:
        for text in pair:
            samples = np.frombuffer(tts.synthesize(text), dtype="<i2")
            loud = np.flatnonzero(np.abs(samples) >= 328)
            out.append((text, samples[loud[0] : loud[-1] + 1].tobytes() + silence))
    return out


def measure(threads: int, audio: list[tuple[str, bytes]], rate: int, calls: int) -> str:
    started = time.perf_counter()
    model = SmartTurn(intra_op_threads=threads)
    load_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    model.probability(audio[0][1], rate)
    first_ms = (time.perf_counter() - started) * 1000
    for _, pcm in audio[:WARMUP]:
        model.probability(pcm, rate)
    wall, cpu = [], []
    for i in range(calls):
        pcm = audio[i % len(audio)][1]
        wall_0, cpu_0 = time.perf_counter(), time.process_time()
        model.probability(pcm, rate)
        wall.append((time.perf_counter() - wall_0) * 1000)
        cpu.append((time.process_time() - cpu_0) * 1000)
    return (
        f"| {threads} | {load_ms:.0f} | {first_ms:.0f} | {percentile(wall, 50):.1f} "
        f"| {percentile(wall, 90):.1f} | {percentile(cpu, 50):.1f} |"
    )


def scores(audio: list[tuple[str, bytes]], rate: int) -> list[str]:
    model = SmartTurn()
    return [f"| {text} | {model.probability(pcm, rate):.3f} |" for text, pcm in audio]


def by_trailing_silence() -> list[str]:
    """Clips of the turn set scoring above 0.5, by the silence after the words."""
    from bench.turns.audio import RATE, Speech
    from bench.turns.labeled import load
    from bench.turns.noise import build

    model = SmartTurn()
    counts = {kind: [0] * len(TRAILS_MS) for kind in ("complete", "paused")}
    totals = dict.fromkeys(counts, 0)
    for clip in build(load(), Speech()):
        end_ms = clip.words_end_ms
        if clip.noisy or end_ms is None or clip.kind not in counts:
            continue
        totals[clip.kind] += 1
        for i, trail_ms in enumerate(TRAILS_MS):
            pcm = clip.pcm[: 2 * int((end_ms + trail_ms) * RATE / 1000)]
            counts[clip.kind][i] += model.probability(pcm, RATE) > 0.5
    return [
        "| clips scoring above 0.5 | " + " | ".join(f"{t} ms" for t in TRAILS_MS) + " |",
        "|---|" + "---:|" * len(TRAILS_MS),
        *(
            f"| {kind} | " + " | ".join(f"{n}/{totals[kind]}" for n in row) + " |"
            for kind, row in (("complete", counts["complete"]), ("paused", counts["paused"]))
        ),
    ]


def report(calls: int = CALLS) -> str:
    started = time.perf_counter()
    import faster_whisper.feature_extractor  # noqa: F401
    import onnxruntime  # noqa: F401

    import_ms = (time.perf_counter() - started) * 1000  # if not imported already
    tts = PiperTts()
    audio, rate = clips(tts), tts.sample_rate_hz
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        "| intra-op threads | load ms | first call ms | per call p50 ms | p90 ms "
        "| process CPU per call p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
        *(measure(threads, audio, rate, calls) for threads in (1, 2)),
    ]
    return (
        f"{machine()}\n\nCommand: `python -m bench turn-model`. OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; load average {load}. "
        f"{calls} calls cycling over {len(audio)} piper clips (22050 Hz, resampled in the "
        f"call, {TRAILING_SILENCE_S * 1000:.0f} ms trailing silence), after {WARMUP} warm-up "
        f"calls; a fresh model per row, loaded after the imports ({import_ms:.0f} ms).\n\n"
        + "\n".join(rows)
        + "\n\np(complete) of each clip (piper's speech is random; see tests/models/test_turn.py):"
        "\n\n| clip | p |\n|---|---:|\n" + "\n".join(scores(audio, rate))
    )


def main() -> str:
    body = report()
    write_section("End-of-turn model", body)
    return body


if __name__ == "__main__":
    main()
