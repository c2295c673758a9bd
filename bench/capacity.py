"""``python -m bench capacity``: how many sessions one transceiver holds, per backend.

Each backend runs as ``realtime-relay serve --transceivers 1`` on loopback, driven by the
project's load generator (``loadgen``, as ``realtime-relay load``): N sessions, each streaming
the synthetic 1.5 s utterance in real time, turn after turn, for a short bounded run. The
transceiver process (the one child of ``serve``) is measured from /proc: CPU seconds (user +
system) over the run and resident memory at its end.

- local: a step search over N (1, 2, 3, ...) that stops at the first N whose p90 end of
  speech -> first audio passes 1 s (or that has errors); the figure is the last N that
  passed, with the CPU and the memory each of its sessions costs.
- mock, and the openai proxy (in front of a second ``serve --backend mock`` as its upstream,
  as tests/e2e/test_proxy.py does): one run of N sessions; sessions per core is N divided by
  the cores the transceiver used over the run.

Figures go to bench/results.md with the machine and commit; ``transceiver.settings``'s
``LOCAL_SESSIONS_PER_CORE`` (the local backend's default ``--max-sessions`` per core) quotes
them. Not in CI (minutes); part of ``make bench``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import RunningServer, relay_server
from bench.soak import children
from bench.stats import load_average, machine, write_section
from loadgen import LoadOptions, default_speech, run_load, summarize
from loadgen.report import line_chart, page
from relay import loop

FIRST_AUDIO_BUDGET_MS = 1000.0
OUT = Path(__file__).parent / "out"  # plots (gitignored)
LOCAL_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
RUN_S = 24.0
LOCAL_RUN_S = 60.0  # local turns take ~12 s: enough of them for a p90
RAMP_S = 3.0
UPSTREAM_KEY = "sk-capacity-upstream"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Step:
    """One bounded load run against one transceiver."""

    sessions: int
    turns: int
    errors: int
    p90_first_audio_ms: float | None
    cpu_s: float  # the transceiver's CPU seconds over the run
    wall_s: float
    rss_mib: float  # the transceiver's resident memory at the end of the run

    @property
    def cores(self) -> float:
        return self.cpu_s / max(self.wall_s, 1e-6)

    @property
    def passed(self) -> bool:
        p90 = self.p90_first_audio_ms
        return self.errors == 0 and p90 is not None and p90 < FIRST_AUDIO_BUDGET_MS


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    # /proc/PID/stat: fields 14 and 15 (utime, stime) in clock ticks, after "(comm)".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def wakeups(pid: int) -> int:
    """Times the process's threads went to sleep and were woken so far (voluntary context
    switches, /proc/PID/task/*/status): an event loop's waits for its sockets."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def transceiver_pid(server: RunningServer) -> int:
    (pid,) = children(server.process.pid)
    return pid


def measure(server: RunningServer, sessions: int, run_s: float = RUN_S) -> Step:
    pid = transceiver_pid(server)
    options = LoadOptions(
        url=f"{server.ws_base_url}/realtime?model=gpt-realtime",
        sessions=sessions,
        ramp_s=RAMP_S,
        duration_s=run_s,
        audio=default_speech(),
    )
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    figures, elapsed = loop.run(run_load(options))
    wall, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    summary = summarize(options, figures, elapsed)
    step = Step(
        sessions=sessions,
        turns=figures.turns,
        errors=figures.failed_turns + figures.error_events + figures.dropped_sessions,
        p90_first_audio_ms=summary["latency_ms"]["speech_end_to_first_audio"]["p90"],
        cpu_s=cpu,
        wall_s=wall,
        rss_mib=rss_mib(pid),
    )
    print(f"  {step}", flush=True)
    return step


def local_search() -> tuple[float, list[Step]]:
    """The idle RSS (after a warm-up) and the steps, up to and including the first that
    failed."""
    steps: list[Step] = []
    with relay_server("--backend", "local", "--transceivers", "1") as server:
        measure(server, 1)  # warm-up, not counted: first calls into each model are slower
        idle = rss_mib(transceiver_pid(server))
        for sessions in LOCAL_STEPS:
            steps.append(measure(server, sessions, LOCAL_RUN_S))
            if not steps[-1].passed:
                break
    return idle, steps


@contextlib.contextmanager
def proxy_server() -> Iterator[RunningServer]:
    """``--backend openai`` in front of a mock ``serve`` that wants ``UPSTREAM_KEY``."""
    with relay_server("--backend", "mock", "--api-keys", UPSTREAM_KEY) as upstream:
        args = ("--backend", "openai", "--upstream-url", f"{upstream.ws_base_url}/realtime")
        with relay_server(
            *args, "--transceivers", "1", env={"OPENAI_API_KEY": UPSTREAM_KEY}
        ) as server:
            yield server


def per_core(kind: str, sessions: int) -> tuple[float, Step]:
    """Idle RSS and one run of ``sessions`` against the mock or the proxy."""
    if kind == "mock":
        context: contextlib.AbstractContextManager[RunningServer] = relay_server(
            "--backend", "mock", "--transceivers", "1"
        )
    else:
        context = proxy_server()
    with context as server:
        measure(server, min(sessions, 5))  # warm-up
        return rss_mib(transceiver_pid(server)), measure(server, sessions)


def local_rows(idle: float, steps: list[Step]) -> tuple[list[str], dict[str, Any]]:
    rows = [
        f"| {s.sessions} | {s.turns} | {s.errors} | {_ms(s.p90_first_audio_ms)} | "
        f"{s.cores:.2f} | {s.rss_mib:.0f} MiB | {'yes' if s.passed else 'no'} |"
        for s in steps
    ]
    passed = [s for s in steps if s.passed]
    best = passed[-1] if passed else None
    figures: dict[str, Any] = {"sessions": best.sessions if best else 0}
    if best:
        figures["cores_per_session"] = best.cores / best.sessions
        figures["rss_per_session_mib"] = (best.rss_mib - idle) / best.sessions
        figures["per_core"] = best.sessions / (os.cpu_count() or 1)
    return rows, figures


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def report(
    idle: float,
    steps: list[Step],
    flat: dict[str, tuple[float, Step]],
    sessions: int,
    load_before: str,
) -> str:
    rows, best = local_rows(idle, steps)
    cores = os.cpu_count() or 1
    lines = [
        f"{machine()}\n",
        f"Command: `python -m bench capacity` (part of `make bench`). Each backend as "
        f"`serve --transceivers 1`; every session streams the load generator's 1.5 s "
        f"utterance in real time, turn after turn, for {LOCAL_RUN_S:g} s (local) or "
        f"{RUN_S:g} s (mock, proxy), started over {RAMP_S:g} s, after a warm-up run that "
        f"is not counted. CPU and memory are the transceiver process's (/proc), not the "
        f"relay's. Load average (1, 5, 15 min) {load_before} before the run and "
        f"{load_average()} after it: other work on the machine lowers every figure.\n",
        f"**local backend**: {best['sessions']} sessions held with p90 end of speech -> "
        f"first audio under {FIRST_AUDIO_BUDGET_MS:g} ms on {cores} cores "
        f"({best.get('per_core', 0):.2f} per core).",
    ]
    if "cores_per_session" in best:
        lines[-1] += (
            f" Per session: {best['cores_per_session']:.2f} cores and "
            f"{best['rss_per_session_mib']:.0f} MiB RSS (idle transceiver after the "
            f"warm-up, models loaded: {idle:.0f} MiB)."
        )
    lines += [
        "",
        "| sessions | turns | errors | p90 first audio | cores used | RSS | under 1 s |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"**mock and openai proxy** ({sessions} sessions each; the proxy's upstream is a "
        f"mock `serve` on the same machine, its CPU not counted):",
        "",
        "| backend | turns | errors | p90 first audio | cores used | sessions per core | "
        "RSS idle | RSS per session |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (idle_rss, step) in flat.items():
        lines.append(
            f"| {name} | {step.turns} | {step.errors} | {_ms(step.p90_first_audio_ms)} | "
            f"{step.cores:.2f} | {step.sessions / max(step.cores, 1e-6):.0f} | "
            f"{idle_rss:.0f} MiB | {(step.rss_mib - idle_rss) / step.sessions:.2f} MiB |"
        )
    return "\n".join(lines)


def main(sessions: int = 50) -> str:
    load_before = load_average()
    print(f"local backend: step search (load average {load_before})", flush=True)
    idle, steps = local_search()
    flat = {}
    for kind in ("mock", "proxy"):
        print(f"{kind}: {sessions} sessions", flush=True)
        flat[kind] = per_core(kind, sessions)
    body = report(idle, steps, flat, sessions, load_before)
    print(body)
    write_section("Capacity: sessions per transceiver", body)
    write_plot(steps)
    return body


def write_plot(steps: list[Step]) -> None:
    """bench/out/capacity.html: the local backend's p90 first audio against sessions."""
    xs = [float(s.sessions) for s in steps]
    p90 = [s.p90_first_audio_ms if s.p90_first_audio_ms is not None else math.nan for s in steps]
    series = {"p90 first audio": p90, "budget": [FIRST_AUDIO_BUDGET_MS] * len(steps)}
    chart = line_chart("Local backend: end of speech to first audio", xs, series, "ms", "sessions")
    OUT.mkdir(exist_ok=True)
    (OUT / "capacity.html").write_text(page("python -m bench capacity", [chart]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
