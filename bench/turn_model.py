"""The end-of-turn model (models/turn.py, Smart Turn v3.2): load time and cost per call.

``python -m bench turn-model`` synthesizes complete and cut-off sentences with the bundled
piper voice (22050 Hz, resampled by the model's own path, 100 ms of trailing silence),
then, for 1 and 2 onnxruntime intra-op threads: the load (``SmartTurn()``), the first call,
and CALLS timed calls cycling over the clips, in wall time and in process CPU time (the
number that counts on a shared machine). It also writes OPENBLAS_NUM_THREADS and the load
average: with OpenBLAS threads free, the mel matmul wakes them and they spin, doubling
the CPU per call (README.md, "End-of-turn model"). Last, how the model's answer depends on
the silence after the words: on the labeled turn set's clean clips (bench/turns/), each cut
at the end of its words (complete), of its first half (mid-sentence pause) or before a
pause inside its words (a comma's), plus 100-400 ms of silence, how many score above 0.5
(why transceiver/turns.py asks at 100 and 200 ms, and why a list is cut at its first comma);
the words' model's scores on the set's text (models/turn_text.py); and how sure the pause
STT is of its transcripts of speech, noise and synthetic speech (``GUESS_LOGPROB``).
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
INNER_PAUSE_MS = 150  # a pause inside the words: a comma's, in piper's speech


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
    """Clips of the turn set scoring above 0.5, by the silence after the words: the words
    of a complete utterance, those before a mid-sentence pause, and those before each
    pause inside the words (a comma's, 150 ms or longer in piper's speech: a list's items,
    a filler's comma, "Thank you, that's all"), then digital silence."""
    from bench.turns.audio import LEAD_MS, RATE, Speech, quiet_spans, silence
    from bench.turns.labeled import load
    from bench.turns.noise import build

    model = SmartTurn()
    kinds = ("complete", "paused", "inner")
    counts = {kind: [0] * len(TRAILS_MS) for kind in kinds}
    totals = dict.fromkeys(kinds, 0)
    inner_ms: list[float] = []
    for clip in build(load(), Speech()):
        end_ms = clip.words_end_ms
        if clip.noisy or end_ms is None or clip.kind not in counts:
            continue
        ends = [(clip.kind, end_ms)]
        for start_ms, length_ms in quiet_spans(clip.pcm, INNER_PAUSE_MS, LEAD_MS, end_ms):
            ends.append(("inner", start_ms))
            inner_ms.append(length_ms)
        for kind, words_ms in ends:
            totals[kind] += 1
            words = clip.pcm[: 2 * int(words_ms * RATE / 1000)]
            for i, trail_ms in enumerate(TRAILS_MS):
                counts[kind][i] += model.probability(words + silence(trail_ms), RATE) > 0.5
    names = {
        "complete": "complete utterances",
        "paused": "before a mid-sentence pause",
        "inner": "before a pause inside the words",
    }
    lengths = (
        f"The {len(inner_ms)} pauses inside the words last {min(inner_ms):.0f}-"
        f"{max(inner_ms):.0f} ms (median {percentile(inner_ms, 50):.0f}).\n\n"
        if inner_ms
        else ""
    )
    return [
        lengths
        + "| words, then silence: clips scoring above 0.5 | "
        + " | ".join(f"{t} ms" for t in TRAILS_MS)
        + " |",
        "|---|" + "---:|" * len(TRAILS_MS),
        *(
            f"| {names[kind]} | " + " | ".join(f"{n}/{totals[kind]}" for n in counts[kind]) + " |"
            for kind in kinds
        ),
    ]


def words_scores() -> list[str]:
    """The words' model (models/turn_text.py) on the turn set's text: the complete
    utterances and the words before each mid-sentence pause (as written, not transcribed)."""
    from bench.turns.labeled import load
    from models.turn_text import TextTurn
    from transceiver.turns import TEXT_THRESHOLD

    turns, words = load(), TextTurn()
    kinds = {
        "complete utterances": [c.text for c in turns.complete],
        "before a mid-sentence pause": [p.cut_after for p in turns.paused],
    }
    rows = [
        f"| words | ln p, lowest | highest | at or below {TEXT_THRESHOLD:g} (the default "
        "threshold) |",
        "|---|---:|---:|---:|",
    ]
    for kind, texts in kinds.items():
        scores = [words.log_probability(text) for text in texts]
        below = sum(score <= TEXT_THRESHOLD for score in scores)
        rows.append(f"| {kind} | {min(scores):.1f} | {max(scores):.1f} | {below}/{len(scores)} |")
    words.close()
    return rows


def pause_transcripts() -> list[str]:
    """How sure the pause STT (the bundled Whisper tiny.en, as transceiver/turns.py runs it)
    is of what it transcribes: the mean token log-probability on the turn set's speech
    (the words of each complete utterance and those before each mid-sentence pause), clean
    and with noise, on its noise-only clips, and on synthetic speech (models/synth.py: the load
    generator's voice and the proxy-turns bench's). Below GUESS_LOGPROB the words are not
    judged."""
    from bench.proxy_turns import UTTERANCES
    from bench.turns.audio import RATE, Speech
    from bench.turns.labeled import load
    from bench.turns.noise import build
    from loadgen.client import SPOKEN_TEXT
    from models.audio import resample
    from models.stt import WhisperStt
    from models.synth import speech
    from transceiver.turns import GUESS_LOGPROB, MODEL_RATE_HZ, confidence

    stt = WhisperStt(None, language="en", short_window=True)
    kinds: dict[str, list[bytes]] = {
        "speech (piper)": [],
        "speech, noise at 10 dB SNR": [],
        "noise only": [],
        "synthetic speech": [],
    }
    for clip in build(load(), Speech()):
        if clip.kind == "noise":
            kinds["noise only"].append(clip.pcm)
        elif clip.words_end_ms is not None:
            kind = "speech, noise at 10 dB SNR" if clip.noisy else "speech (piper)"
            kinds[kind].append(clip.pcm[: 2 * int(clip.words_end_ms * RATE / 1000)])
    texts = [SPOKEN_TEXT, *(words for _, words in UTTERANCES)]
    kinds["synthetic speech"] = [speech(text) for text in texts]
    rows = [
        f"| audio | clips | mean token ln p, lowest | highest | below {GUESS_LOGPROB:g} "
        "(taken for a guess) | what Whisper said, the least sure |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind, clips in kinds.items():
        scored = []
        for pcm in clips:
            pcm16k = resample(pcm, RATE, MODEL_RATE_HZ)
            transcript = stt.transcribe(pcm16k, sample_rate_hz=MODEL_RATE_HZ, logprobs=True)
            mean = confidence(transcript)
            if mean is not None:  # None: nothing said
                scored.append((mean, transcript.text))
        means = [mean for mean, _ in scored]
        below = sum(mean < GUESS_LOGPROB for mean in means)
        least = min(scored)[1] if scored else "-"
        low, high = (f"{min(means):.2f}", f"{max(means):.2f}") if means else ("-", "-")
        rows.append(
            f"| {kind} | {len(clips)} ({len(scored)} with words) | {low} | {high} "
            f"| {below}/{len(scored)} | {least[:40]!r} |"
        )
    return rows


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
        "\n\n| clip | p |\n|---|---:|\n"
        + "\n".join(scores(audio, rate))
        + "\n\nBy the silence after the words, on the turn set's clean clips (bench/turns/): "
        "how many the model calls finished (transceiver/turns.py asks at 100 and 200 ms)."
        "\n\n"
        + "\n".join(by_trailing_silence())
        + "\n\nThe words' model (models/turn_text.py, the bundled SmolLM2) on the set's text: "
        "ln P(the message ends after the words).\n\n"
        + "\n".join(words_scores())
        + "\n\nThe pause STT (Whisper tiny.en, transceiver/turns.py): how sure it is of what "
        "it transcribes, on the set's speech (clean and with noise), its noise-only clips and "
        "synthetic speech.\n\n" + "\n".join(pause_transcripts())
    )


def main() -> str:
    body = report()
    write_section("End-of-turn model", body)
    return body


if __name__ == "__main__":
    main()
