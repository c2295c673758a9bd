"""``python -m bench frames``: what one frame through the relay costs, in CPU.

``serve --backend mock --no-mock-realtime --transceivers 1`` on loopback, driven by the load
generator in this process (``loadgen``, as ``realtime-relay load``): N sessions stream the
load generator's spoken utterance in real time, turn after turn, with server VAD, for a
bounded run. Each process's CPU time (user + system: /proc for the relay and its one
transceiver, ``time.process_time`` for this process) over the run is divided by the frames
that crossed the relay in both directions (the relay's ``realtime_relay_events_total``).
CPU time per frame is steadier on a shared machine than latency, and the load generator is
measured too, since it shares the machine in every figure.

Targets (the issue's, 2 cores): relay at most 15 us a frame, transceiver (mock, server VAD)
at most 50 us. The most sessions with p99 event latency under 50 ms is ``python -m bench
relay``'s figure (bench/overhead.py). Not in CI (minutes); part of ``make bench``.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.capacity import cpu_seconds
from bench.harness import RunningServer, relay_server
from bench.soak import children
from bench.stats import load_average, machine, write_section
from loadgen import LoadOptions, default_speech, run_load, summarize
from loadgen.report import line_chart, page
from relay import loop

OUT = Path(__file__).parent / "out"  # plots (gitignored)
STEPS = (50, 100, 200)
RUN_S = 20.0
RAMP_S = 5.0
RELAY_TARGET_US = 15.0
TRANSCEIVER_TARGET_US = 50.0
_EVENTS = re.compile(r'^realtime_relay_events_total\{direction="(?:in|out)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Step:
    """One bounded run: CPU seconds of each process, frames through the relay."""

    sessions: int
    frames: int
    wall_s: float
    relay_s: float
    transceiver_s: float
    loadgen_s: float
    turns: int
    errors: int
    first_audio_ms: tuple[float | None, float | None]  # p50, p90

    def per_frame_us(self, cpu_s: float) -> float:
        return cpu_s / max(self.frames, 1) * 1e6


def relay_frames(server: RunningServer) -> int:
    """Frames the relay forwarded so far, both directions (its /metrics)."""
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics") as reply:
        text = reply.read().decode()
    return int(sum(float(value) for value in _EVENTS.findall(text)))


def measure(server: RunningServer, sessions: int, run_s: float = RUN_S) -> Step:
    relay_pid = server.process.pid
    (transceiver_pid,) = children(relay_pid)
    options = LoadOptions(
        url=f"{server.ws_base_url}/realtime?model=gpt-realtime",
        sessions=sessions,
        ramp_s=RAMP_S,
        duration_s=run_s,
        audio=default_speech(),
    )
    frames = relay_frames(server)
    relay, transceiver = cpu_seconds(relay_pid), cpu_seconds(transceiver_pid)
    own, started = time.process_time(), time.monotonic()
    figures, elapsed = loop.run(run_load(options))
    wall, own = time.monotonic() - started, time.process_time() - own
    summary = summarize(options, figures, elapsed)["latency_ms"]["speech_end_to_first_audio"]
    step = Step(
        sessions=sessions,
        frames=relay_frames(server) - frames,
        wall_s=wall,
        relay_s=cpu_seconds(relay_pid) - relay,
        transceiver_s=cpu_seconds(transceiver_pid) - transceiver,
        loadgen_s=own,
        turns=figures.turns,
        errors=figures.failed_turns + figures.error_events + figures.dropped_sessions,
        first_audio_ms=(summary["p50"], summary["p90"]),
    )
    print(f"  {step}", flush=True)
    return step


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _link_mode() -> str:
    mode = os.environ.get("RELAY_TRANSCEIVER_LINK") or "mux"
    return "one link per transceiver" if mode == "mux" else "one WebSocket per session"


def report(steps: list[Step], load_before: str) -> str:
    lines = [
        f"{machine()}\n",
        "Command: `python -m bench frames` (part of `make bench`). "
        "`serve --backend mock --no-mock-realtime --transceivers 1`; each session streams "
        f"the load generator's 1.5 s utterance in real time with server VAD, turn after "
        f"turn, for {RUN_S:g} s (started over {RAMP_S:g} s). CPU per frame = the process's "
        "CPU time over the run / the frames the relay forwarded (both directions). Relay <-> "
        f"transceiver: {_link_mode()} (`RELAY_TRANSCEIVER_LINK`). Load average (1, 5, 15 "
        f"min) {load_before} before, {load_average()} after.\n",
        "| sessions | frames/s | relay us/frame | transceiver us/frame | load generator "
        "us/frame | turns | errors | first audio p50 / p90 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s.sessions} | {s.frames / s.wall_s:.0f} | {s.per_frame_us(s.relay_s):.0f} | "
            f"{s.per_frame_us(s.transceiver_s):.0f} | {s.per_frame_us(s.loadgen_s):.0f} | "
            f"{s.turns} | {s.errors} | {_ms(s.first_audio_ms[0])} / {_ms(s.first_audio_ms[1])} |"
        )
    worst_relay = max(s.per_frame_us(s.relay_s) for s in steps)
    worst_transceiver = max(s.per_frame_us(s.transceiver_s) for s in steps)
    lines += [
        "",
        f"Targets: relay at most {RELAY_TARGET_US:g} us a frame (worst here "
        f"{worst_relay:.0f}: {'met' if worst_relay <= RELAY_TARGET_US else 'not met'}); "
        f"transceiver at most {TRANSCEIVER_TARGET_US:g} us (worst here "
        f"{worst_transceiver:.0f}: "
        f"{'met' if worst_transceiver <= TRANSCEIVER_TARGET_US else 'not met'}).",
    ]
    return "\n".join(lines)


def main(steps: tuple[int, ...] = STEPS) -> str:
    load_before = load_average()
    results = []
    with relay_server("--backend", "mock", "--no-mock-realtime", "--transceivers", "1") as server:
        measure(server, 5, 3.0)  # warm-up, not counted
        for sessions in steps:
            print(f"frames: {sessions} sessions", flush=True)
            results.append(measure(server, sessions))
    body = report(results, load_before)
    print(body)
    write_section("CPU per frame", body)
    write_plot(results)
    return body


def write_plot(steps: list[Step]) -> None:
    """bench/out/frames.html: CPU per frame against sessions, one line per process."""
    xs = [float(s.sessions) for s in steps]
    series = {
        "relay": [s.per_frame_us(s.relay_s) for s in steps],
        "transceiver": [s.per_frame_us(s.transceiver_s) for s in steps],
        "load generator": [s.per_frame_us(s.loadgen_s) for s in steps],
    }
    chart = line_chart("CPU per frame", xs, series, "us", x_label="sessions")
    OUT.mkdir(exist_ok=True)
    (OUT / "frames.html").write_text(page("python -m bench frames", [chart]))


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or STEPS)
