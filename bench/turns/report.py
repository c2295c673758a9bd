"""The turn bench's figures: from the recorded events to bench/results.md's tables."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.stats import percentile
from bench.turns.audio import Clip, silence
from bench.turns.labeled import PAUSE_LABELS, TurnSet
from bench.turns.stream import Outcome

STOPPED = "input_audio_buffer.speech_stopped"
# A speech_stopped this close before the end of the last word still ends that word (the
# speech detector's frames are 10-30 ms; piper's last phoneme fades out).
END_SLACK_MS = 150
TARGET_END_MS = 300
TARGET_CUT_SHARE = 0.10
TARGET_FIRST_AUDIO_MS = 450


@dataclass
class Figures:
    runs: dict[str, list[Outcome]]
    inference: tuple[list[float], list[float]] = ([], [])
    local: dict[str, list[Outcome]] = field(default_factory=dict)
    local_turns: list[Outcome] = field(default_factory=list)  # semantic_vad auto, clean


# The transceiver option that has the mock judge each pause by the audio model alone (by
# default it transcribes the pause and judges the words too)
NO_WORDS = "--no-turn-transcribe"
# semantic_vad auto's row again with fewer sessions at once, as many as the local backend's
FEWER = ", 4 at once"


def end_latency(outcome: Outcome) -> float | None:
    """End of speech -> the speech_stopped that ends the utterance (None: none came)."""
    end = outcome.clip.speech_end_ms
    assert end is not None
    for arrival, event in outcome.of_type(STOPPED):
        if event["audio_end_ms"] >= end - END_SLACK_MS:
            return outcome.wall_ms(arrival, end)
    return None


def early_stop(outcome: Outcome) -> bool:
    """A turn ended inside a complete utterance (at a comma, say) before its end."""
    end = outcome.clip.speech_end_ms
    assert end is not None
    return any(e["audio_end_ms"] < end - END_SLACK_MS for _, e in outcome.of_type(STOPPED))


def cut_in_pause(outcome: Outcome) -> bool:
    """The turn ended before the second half of a paused sentence began."""
    resume = outcome.clip.resume_ms
    assert resume is not None
    return any(e["audio_end_ms"] < resume for _, e in outcome.of_type(STOPPED))


def first_audio(outcome: Outcome) -> float | None:
    end = outcome.clip.speech_end_ms
    assert end is not None
    deltas = outcome.of_type("response.output_audio.delta")
    return outcome.wall_ms(deltas[0][0], end) if deltas else None


def inference_ms(clips: list[Clip]) -> tuple[list[float], list[float]]:
    """The end-of-turn model's wall and process CPU time per call, on each speech clip's
    content (24 kHz, resampled in the call as the transceiver's is) with 100 ms of silence."""
    from models.turn import SmartTurn

    model = SmartTurn()
    model.probability(silence(1000), 24_000)  # the first call is the slow one
    wall, cpu = [], []
    for clip in clips:
        end = clip.words_end_ms
        assert end is not None
        pcm = clip.pcm[: int(end * 48) // 2 * 2] + silence(100)
        wall_0, cpu_0 = time.perf_counter(), time.process_time()
        model.probability(pcm, 24_000)
        wall.append((time.perf_counter() - wall_0) * 1000)
        cpu.append((time.process_time() - cpu_0) * 1000)
    return wall, cpu


def _of(outcomes: list[Outcome], kind: str, noisy: bool) -> list[Outcome]:
    return [o for o in outcomes if o.clip.kind == kind and o.clip.noisy == noisy]


def _ends(outcomes: list[Outcome]) -> str:
    values = [x for x in map(end_latency, outcomes) if x is not None]
    missed = len(outcomes) - len(values)
    early = sum(map(early_stop, outcomes))
    return f"{percentile(values, 50):.0f} / {percentile(values, 90):.0f} | {missed} / {early}"


def _share(hits: int, n: int) -> str:
    return f"{hits}/{n} ({100 * hits / n:.0f}%)" if n else "-"


def _cuts(outcomes: list[Outcome]) -> str:
    return _share(sum(map(cut_in_pause, outcomes)), len(outcomes))


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main_table(figures: Figures) -> list[str]:
    rows = [
        "| detector | complete: end of speech → speech_stopped p50 / p90 ms "
        "| missed / cut early | the same with noise, p50 / p90 ms | missed / cut early "
        "| mid-sentence pauses cut | the same with noise | false starts on noise only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, outcomes in figures.runs.items():
        noise = [o for o in outcomes if o.clip.kind == "noise"]
        starts = sum(bool(o.of_type("input_audio_buffer.speech_started")) for o in noise)
        rows.append(
            f"| {label} | {_ends(_of(outcomes, 'complete', False))} "
            f"| {_ends(_of(outcomes, 'complete', True))} "
            f"| {_cuts(_of(outcomes, 'paused', False))} | {_cuts(_of(outcomes, 'paused', True))} "
            f"| {_share(starts, len(noise))} |"
        )
    return rows


def label_table(figures: Figures) -> list[str]:
    """Mid-sentence pauses cut, per kind of pause (clean and noisy together)."""
    rows = [
        "| detector | " + " | ".join(PAUSE_LABELS) + " |",
        "|---|" + "---:|" * len(PAUSE_LABELS),
    ]
    for label, outcomes in figures.runs.items():
        paused = [o for o in outcomes if o.clip.kind == "paused"]
        cells = []
        for kind in PAUSE_LABELS:
            of_kind = [o for o in paused if o.clip.label == kind]
            cells.append(f"{sum(map(cut_in_pause, of_kind))}/{len(of_kind)}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def noise_table(figures: Figures) -> list[str]:
    outcomes = next(iter(figures.runs.values()))
    names = [f"{o.clip.label} {o.clip.id}" for o in outcomes if o.clip.kind == "noise"]
    rows = ["| detector | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, runs in figures.runs.items():
        marks = [
            "start" if o.of_type("input_audio_buffer.speech_started") else "-"
            for o in runs
            if o.clip.kind == "noise"
        ]
        rows.append(f"| {label} | " + " | ".join(marks) + " |")
    return rows


def local_table(figures: Figures) -> list[str]:
    rows = [
        "| detector | end of speech → first audio delta p50 / p90 ms | no audio | target |",
        "|---|---:|---:|---|",
    ]
    for label, outcomes in figures.local.items():
        values = [x for x in map(first_audio, outcomes) if x is not None]
        p50 = percentile(values, 50)
        target = (
            f"p50 ≤ {TARGET_FIRST_AUDIO_MS} ms: {_met(p50 <= TARGET_FIRST_AUDIO_MS)}"
            if label == "semantic_vad auto"
            else ""
        )
        rows.append(
            f"| {label} | {p50:.0f} / {percentile(values, 90):.0f} "
            f"| {len(outcomes) - len(values)} | {target} |"
        )
    return rows


def _turn_rows(prefix: str, outcomes: list[Outcome]) -> list[str]:
    """The two turn targets' rows for one detector's clean clips: end of complete turns
    (p50) and the share of mid-sentence pauses cut."""
    ends = [x for x in map(end_latency, _of(outcomes, "complete", False)) if x is not None]
    paused = _of(outcomes, "paused", False)
    share = sum(map(cut_in_pause, paused)) / max(1, len(paused))
    p50 = percentile(ends, 50) if ends else float("nan")
    return [
        f"| {prefix}complete turns end within {TARGET_END_MS} ms, p50 | {p50:.0f} ms "
        f"| {_met(p50 <= TARGET_END_MS)} |",
        f"| {prefix}at most {TARGET_CUT_SHARE:.0%} of mid-sentence pauses cut off "
        f"| {share:.0%} | {_met(share <= TARGET_CUT_SHARE)} |",
    ]


def targets(figures: Figures) -> list[str]:
    local = figures.local.get("semantic_vad auto", [])
    firsts = [x for x in map(first_audio, local) if x is not None]
    first = percentile(firsts, 50)
    return [
        "| target (semantic_vad auto, clean speech) | measured | |",
        "|---|---:|---|",
        *_turn_rows("", figures.runs.get("semantic_vad auto", [])),
        f"| first audio within {TARGET_FIRST_AUDIO_MS} ms p50, local backend | {first:.0f} ms "
        f"| {_met(first <= TARGET_FIRST_AUDIO_MS)} |",
        *_turn_rows("local backend: ", figures.local_turns),
        *_turn_rows(
            "mock, 4 sessions at once as the local backend's row: ",
            figures.runs.get(f"semantic_vad auto{FEWER}", []),
        ),
    ]


def render(figures: Figures, turns: TurnSet, concurrency: int) -> str:
    wall, cpu = figures.inference
    return "\n".join(
        [
            f"The set: {len(turns.complete)} complete utterances, {len(turns.paused)} with a "
            "mid-sentence pause of 400-1500 ms (cut from the whole sentence at its quietest "
            f"20 ms after the pause's last word), a copy of each with speech-shaped noise at "
            f"{turns.noisy_snr_db:.0f} dB SNR, and {len(turns.noise)} noise-only clips; piper "
            "en_US-joe-medium, deterministic (noise_scale 0), length_scale 0.85-1.15. Each "
            f"clip in its own session, streamed in real time in 20 ms chunks, {concurrency} "
            "sessions at once (the row ', 4 at once': as many as the local backend's row), "
            "against `serve --backend mock` (one transceiver), whose semantic_vad judges "
            "each pause by the audio model and by the words of a transcript of the speech so "
            "far (about 160 ms of model CPU a pause, with the audio model's call; its models "
            f"built before the run); the rows '{NO_WORDS}' against `serve --backend mock "
            f"{NO_WORDS}`, the audio model alone; the rows '--vad silero' against `serve "
            "--backend mock --vad silero`, Silero VAD gating the speech detector, which "
            "without it hears the noise as speech. Times are "
            "wall clock from the moment the end of speech was sent. 'missed': no "
            "speech_stopped within the detector's longest wait + 1 s; 'cut early': a "
            "speech_stopped before the end of a complete utterance; 'cut': a speech_stopped "
            "inside a mid-sentence pause (the utterance becomes two user items).",
            "",
            *targets(figures),
            "",
            *main_table(figures),
            "",
            "Mid-sentence pauses cut, by kind of pause (clean + noisy):",
            "",
            *label_table(figures),
            "",
            "False starts (a speech_started) per noise-only clip (level relative to the set's "
            "speech; `hum` is 50 Hz mains and harmonics, `babble` six other utterances mixed):",
            "",
            *noise_table(figures),
            "",
            f"End-of-turn model (models/turn.py) per call, in this process on the {len(wall)} "
            "speech clips (to the end of the utterance or of the first half, + 100 ms "
            f"silence): wall p50 {percentile(wall, 50):.0f} / p90 {percentile(wall, 90):.0f} "
            f"ms, process CPU p50 {percentile(cpu, 50):.0f} / p90 {percentile(cpu, 90):.0f} ms.",
            "",
            f"Local backend (bundled models), {len(next(iter(figures.local.values()), []))} "
            "clean complete questions, one session at a time, a new session per question:",
            "",
            *local_table(figures),
            "",
            "Local backend, semantic_vad auto on every clean clip (no response created, "
            f"{len(figures.local_turns)} sessions, 4 at once): the speculative transcript at "
            "each pause lets the words confirm the audio model's 'finished' "
            "(models/turn_text.py).",
            "",
            *main_table(Figures({"semantic_vad auto, local": figures.local_turns})),
        ]
    )
