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
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.capacity import cpu_split, wakeups
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
class Usage:
    """What a server process used over a run: CPU seconds, and how often it slept."""

    user_s: float
    system_s: float
    wakeups: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        return cls(*cpu_split(pid), wakeups(pid))

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.user_s - before.user_s,
            self.system_s - before.system_s,
            self.wakeups - before.wakeups,
        )

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


@dataclass(frozen=True)
class Step:
    """One bounded run: what each process used, frames through the relay."""

    sessions: int
    frames: int
    wall_s: float
    relay: Usage
    transceiver: Usage
    loadgen_s: float
    turns: int
    errors: int
    first_audio_ms: tuple[float | None, float | None]  # p50, p90

    def per_frame_us(self, cpu_s: float) -> float:
        return cpu_s / max(self.frames, 1) * 1e6

    @property
    def relay_s(self) -> float:
        return self.relay.cpu_s

    @property
    def transceiver_s(self) -> float:
        return self.transceiver.cpu_s

    def per_wakeup(self, usage: Usage) -> float:
        """Frames per wake-up of the process (more: each wake-up's cost shared)."""
        return self.frames / max(usage.wakeups, 1)

    def cell(self, usage: Usage) -> str:
        """us a frame, its system (kernel) part in brackets."""
        return f"{self.per_frame_us(usage.cpu_s):.0f} ({self.per_frame_us(usage.system_s):.0f})"


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
    relay, transceiver = Usage.of(relay_pid), Usage.of(transceiver_pid)
    own, started = time.process_time(), time.monotonic()
    figures, elapsed = loop.run(run_load(options))
    wall, own = time.monotonic() - started, time.process_time() - own
    summary = summarize(options, figures, elapsed)["latency_ms"]["speech_end_to_first_audio"]
    step = Step(
        sessions=sessions,
        frames=relay_frames(server) - frames,
        wall_s=wall,
        relay=Usage.of(relay_pid) - relay,
        transceiver=Usage.of(transceiver_pid) - transceiver,
        loadgen_s=own,
        turns=figures.turns,
        errors=figures.failed_turns + figures.error_events + figures.dropped_sessions,
        first_audio_ms=(summary["p50"], summary["p90"]),
    )
    print(f"  {step}", flush=True)
    return step


def wakeup_cost_us(rounds: int = 5000) -> float | None:
    """This machine's CPU cost of one sleep and wake-up across cores: two processes on
    different cores pass a byte back and forth over a socketpair; this one's CPU time per
    round trip (a send, a sleep in recv, a wake-up). None on a single core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the echoing child
        try:
            os.sched_setaffinity(0, {cores[1]})
            for _ in range(rounds):
                theirs.sendall(theirs.recv(1))
        finally:
            os._exit(0)
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cores[0]})
        started = time.process_time()
        for _ in range(rounds):
            ours.sendall(b"x")
            ours.recv(1)
        return (time.process_time() - started) / rounds * 1e6
    finally:
        os.sched_setaffinity(0, before)
        os.waitpid(pid, 0)
        ours.close()
        theirs.close()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _link_mode() -> str:
    mode = os.environ.get("RELAY_TRANSCEIVER_LINK") or "mux"
    return "one link per transceiver" if mode == "mux" else "one WebSocket per session"


def report(steps: list[Step], load_before: str, wakeup_us: float | None = None) -> str:
    cost = (
        ""
        if wakeup_us is None
        else f" On this machine one sleep and wake-up across cores costs {wakeup_us:.0f} us "
        "of CPU (`wakeup_cost_us`: two processes on two cores passing a byte back and "
        "forth over a socketpair), so a process's wake-ups alone cost about that much over "
        "its frames per wake-up, a frame."
    )
    lines = [
        f"{machine()}\n",
        "Command: `python -m bench frames` (part of `make bench`). "
        "`serve --backend mock --no-mock-realtime --transceivers 1`; each session streams "
        f"the load generator's 1.5 s utterance in real time with server VAD, turn after "
        f"turn, for {RUN_S:g} s (started over {RAMP_S:g} s). CPU per frame = the process's "
        "CPU time over the run / the frames the relay forwarded (both directions), its "
        "system (kernel) part in brackets; frames per wake-up = those frames / the "
        "process's voluntary context switches (each a sleep in the event loop's wait and a "
        f"wake-up).{cost} Relay <-> "
        f"transceiver: {_link_mode()} (`RELAY_TRANSCEIVER_LINK`). Load average (1, 5, 15 "
        f"min) {load_before} before, {load_average()} after.\n",
        "| sessions | frames/s | relay us/frame (system) | transceiver us/frame (system) | "
        "load generator us/frame | relay frames per wake-up | transceiver frames per wake-up "
        "| turns | errors | first audio p50 / p90 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s.sessions} | {s.frames / s.wall_s:.0f} | {s.cell(s.relay)} | "
            f"{s.cell(s.transceiver)} | {s.per_frame_us(s.loadgen_s):.0f} | "
            f"{s.per_wakeup(s.relay):.1f} | {s.per_wakeup(s.transceiver):.1f} | "
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
    wakeup_us = wakeup_cost_us()
    results = []
    with relay_server("--backend", "mock", "--no-mock-realtime", "--transceivers", "1") as server:
        measure(server, 5, 3.0)  # warm-up, not counted
        for sessions in steps:
            print(f"frames: {sessions} sessions", flush=True)
            results.append(measure(server, sessions))
    body = report(results, load_before, wakeup_us)
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
