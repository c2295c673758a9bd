"""``python -m bench first-audio``: the local backend's first audio after a spoken question,
by stage, for ``semantic_vad`` (auto) and ``server_vad``.

The part of ``python -m bench turns`` that is about the local backend's latency, on its own
(about 2 minutes instead of 12): the turn set's first 10 clean questions (piper speech,
bench/turns/), one session each, one at a time, streamed in real time. For each, the wall
time from the end of the last word to ``speech_stopped``, ``response.created``, the first
transcript delta and the first audio delta, as the client sees them; p50 and p90 of each.
"""

from __future__ import annotations

import asyncio

from bench.harness import relay_server
from bench.stats import load_average, machine, percentile, write_section
from bench.turns import LOCAL_QUESTIONS
from bench.turns.audio import Clip, Speech
from bench.turns.labeled import load
from bench.turns.noise import build
from bench.turns.stream import Detector, Outcome, run_all

DETECTORS = [Detector("semantic_vad", "auto"), Detector("server_vad")]
STAGES = [
    ("speech_stopped", "input_audio_buffer.speech_stopped"),
    ("response.created", "response.created"),
    ("first words", "response.output_audio_transcript.delta"),
    ("first audio", "response.output_audio.delta"),
]


def stage_ms(outcome: Outcome, event_type: str) -> float | None:
    """How long after the end of the last word ``event_type`` first arrived."""
    seen = outcome.of_type(event_type)
    end = outcome.clip.speech_end_ms
    return outcome.wall_ms(seen[0][0], end) if seen and end is not None else None


def table(runs: dict[str, list[Outcome]]) -> list[str]:
    lines = [
        "| detector | " + " | ".join(f"{name} p50 / p90" for name, _ in STAGES) + " |",
        "|---|" + "---:|" * len(STAGES),
    ]
    for label, outcomes in runs.items():
        cells = []
        for _, event_type in STAGES:
            values = [v for o in outcomes if (v := stage_ms(o, event_type)) is not None]
            cells.append(
                f"{percentile(values, 50):.0f} / {percentile(values, 90):.0f} ms" if values else "-"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> str:
    clips: list[Clip] = build(load(), Speech())
    questions = [c for c in clips if c.kind == "complete" and c.label == "question"]
    questions = [c for c in questions if not c.noisy][:LOCAL_QUESTIONS]
    load_before = load_average()
    runs: dict[str, list[Outcome]] = {}
    with relay_server("--backend", "local") as server:
        for detector in DETECTORS:
            runs[detector.label] = [
                asyncio.run(run_all(server.base_url, [clip], detector, 1, True))[0]
                for clip in questions
            ]
    body = "\n".join(
        [
            f"`python -m bench first-audio` on {machine()}; load average {load_before} "
            f"before, {load_average()} after. {len(questions)} clean spoken questions of the "
            "turn set, one session at a time, `serve --backend local` with the bundled "
            "models; wall time after the end of the last word:",
            "",
            *table(runs),
            "",
            "Target (the turn-taking issue): first audio within 450 ms p50 with "
            "`semantic_vad` auto.",
        ]
    )
    print(body)
    write_section("First audio on the local backend", body)
    return body
