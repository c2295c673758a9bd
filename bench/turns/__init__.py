"""``python -m bench turns``: turn detection measured on a labeled set of piper speech.

The set (bench/turns/utterances.json, loaded by bench/turns/labeled.py) has complete
questions and statements, sentences with a mid-sentence pause of 400-1500 ms, a noisy copy
of each (speech-shaped noise at 10 dB SNR) and noise-only clips. Each clip is streamed in
real time (20 ms chunks) in its own session through the official SDK against
``serve --backend mock`` (8 sessions at once), for server_vad (500 ms) and semantic_vad at
each eagerness (the audio model and the words), and semantic_vad auto with the audio model
alone (``--no-turn-transcribe``) and with Silero gating the speech detector. Then the
end-of-turn model's cost per call, measured on the same clips in this process, and end
of speech -> first audio delta on the local backend for 10 complete questions,
semantic_vad auto against server_vad.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.harness import RunningServer, relay_server
from bench.stats import load_average, machine, write_section
from bench.turns.audio import Clip, Speech
from bench.turns.labeled import load
from bench.turns.noise import build
from bench.turns.report import FEWER, NO_WORDS, Figures, inference_ms, render
from bench.turns.stream import Detector, Outcome, run_all

CONCURRENCY = 8
LOCAL_QUESTIONS = 10
LOCAL_CONCURRENCY = 4
DETECTORS = [
    Detector("server_vad"),
    *(Detector("semantic_vad", e) for e in ("low", "medium", "high", "auto")),
]
SILERO = ("--vad", "silero")
WORDS_BUILT = "pauses are transcribed for the words"  # transceiver/turns.py's log
LOCAL_DETECTORS = [Detector("semantic_vad", "auto"), Detector("server_vad")]
COMMAND = "python -m bench turns"


def mock_runs(clips: list[Clip]) -> dict[str, list[Outcome]]:
    """Each detector on the mock as it comes (semantic_vad judges the audio and the words of
    each pause: about 160 ms of model CPU a pause), semantic_vad auto again with 4 sessions
    at once as the local backend's row, and with ``--no-turn-transcribe`` (the audio model
    alone); then with ``--vad silero`` (Silero gating the speech detector: the clips with
    noise), with the words and without."""
    runs: dict[str, list[Outcome]] = {}
    auto = Detector("semantic_vad", "auto")
    servers = [
        ((), [(d, CONCURRENCY) for d in DETECTORS] + [(auto, LOCAL_CONCURRENCY)]),
        ((NO_WORDS,), [(auto, CONCURRENCY)]),
        (SILERO, [(auto, CONCURRENCY)]),  # the noisy clips: webrtcvad hears noise as speech
        ((*SILERO, NO_WORDS), [(auto, CONCURRENCY)]),
    ]
    for args, detectors in servers:
        with relay_server("--backend", "mock", *args) as server:
            if NO_WORDS not in args:
                asyncio.run(words_built(server, clips))
            for detector, concurrency in detectors:
                label = " ".join([detector.label, *args])
                if concurrency != CONCURRENCY:
                    label += FEWER
                started = time.monotonic()
                runs[label] = asyncio.run(run_all(server.base_url, clips, detector, concurrency))
                print(
                    f"  {label}: {len(clips)} clips in {time.monotonic() - started:.0f} s,"
                    f" load average {load_average()}",
                    flush=True,
                )
    return runs


async def words_built(server: RunningServer, clips: list[Clip]) -> None:
    """The mock builds the words' models at its first semantic_vad pause (the audio
    decides until then): one clip to start that, then wait until it says they are built."""
    warm_up = next(c for c in clips if c.kind == "complete" and not c.noisy)
    await run_all(server.base_url, [warm_up], Detector("semantic_vad", "auto"), 1)
    for _ in range(600):
        if any(WORDS_BUILT in line for line in server.lines):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the mock did not build the words' models in 60 s")


def local_runs(questions: list[Clip], clean: list[Clip], figures: Figures) -> None:
    """First audio on ``questions``; then turn ends on every ``clean`` clip, semantic_vad
    auto, where the local backend's speculative transcript lets the words be checked."""
    runs: dict[str, list[Outcome]] = {}
    # Room for LOCAL_CONCURRENCY sessions at once (the turn ends), past the local backend's
    # default of 0.5 a core: their latency is then a loaded machine's, as the report says.
    with relay_server("--backend", "local", "--max-sessions", str(LOCAL_CONCURRENCY)) as server:
        for detector in LOCAL_DETECTORS:
            outcomes = []
            for clip in questions:  # one at a time: the local backend is slow
                outcomes += asyncio.run(run_all(server.base_url, [clip], detector, 1, True))
            runs[detector.label] = outcomes
            print(f"  local {detector.label}: done, load average {load_average()}", flush=True)
        figures.local = runs
        auto = Detector("semantic_vad", "auto")
        figures.local_turns = asyncio.run(run_all(server.base_url, clean, auto, LOCAL_CONCURRENCY))
        print(f"  local turn ends: done, load average {load_average()}", flush=True)


def main() -> str:
    started = time.monotonic()
    load_before = load_average()
    print(f"turns: synthesizing the set (cached), load average {load_before}", flush=True)
    turns = load()
    clips = build(turns, Speech())
    print(f"turns: {len(clips)} clips, {len(DETECTORS)} detectors, mock backend", flush=True)
    figures = Figures(mock_runs(clips))
    questions = [c for c in clips if c.kind == "complete" and c.label == "question"]
    questions = [c for c in questions if not c.noisy][:LOCAL_QUESTIONS]
    figures.inference = inference_ms([c for c in clips if c.kind != "noise" and not c.noisy])
    print("turns: local backend", flush=True)
    clean = [c for c in clips if c.kind in ("complete", "paused") and not c.noisy]
    local_runs(questions, clean, figures)
    minutes = (time.monotonic() - started) / 60
    header = (
        f"{machine()}\n\nCommand: `{COMMAND}` ({minutes:.1f} min), OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} (the transceivers set 1 themselves; "
        "this process's own model timing below depends on it). Load average (1, 5, 15 min) "
        f"{load_before} before, {load_average()} after: the machine is shared, and every figure "
        "below is wall time on it."
    )
    body = header + "\n\n" + render(figures, turns, CONCURRENCY)
    write_section("Turn detection", body)
    print(body, flush=True)
    return body
