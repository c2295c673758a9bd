"""``python -m bench soak`` (50 sessions, 3 minutes; other sizes: ``python -m bench.soak
SESSIONS MINUTES``): memory and file descriptors under a long load.

``realtime-relay serve --backend mock --transceivers 2`` on loopback, driven by the load
generator (N sessions streaming real-time audio, turn after turn, for M minutes). Every
process (the relay and each transceiver) is sampled every few seconds: resident memory and
open file descriptors. After a warm-up (the first quarter of the run) neither should grow:
the result lists the growth from the end of the warm-up to the end of the run. Not in CI
(it takes minutes); part of ``make bench``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import relay_server
from bench.stats import machine, write_section
from loadgen import LoadOptions, default_speech, run_load
from relay import loop

SAMPLE_S = 5.0


@dataclass
class Samples:
    """Per process: (seconds since start, RSS MiB, open fds)."""

    rows: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the transceivers ``serve`` supervises)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def usage(pid: int) -> tuple[float, int]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def sample(pids: dict[str, int], samples: Samples, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        for name, pid in pids.items():
            rss, fds = usage(pid)
            samples.rows.setdefault(name, []).append((time.monotonic() - started, rss, fds))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except TimeoutError:
            pass


async def soak(url: str, pids: dict[str, int], sessions: int, minutes: float) -> Samples:
    samples, stop = Samples(), asyncio.Event()
    sampler = asyncio.create_task(sample(pids, samples, stop))
    options = LoadOptions(
        url=url, sessions=sessions, ramp_s=5.0, duration_s=minutes * 60, audio=default_speech()
    )
    figures, _ = await run_load(options)
    stop.set()
    await sampler
    samples.rows["load: turns / failed"] = [(0.0, float(figures.turns), figures.failed_turns)]
    return samples


def report(samples: Samples, sessions: int, minutes: float) -> str:
    lines = [
        "| process | RSS after warm-up | RSS at end | growth | fds after warm-up | fds at end |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in samples.rows.items():
        if name.startswith("load"):
            continue
        warm = rows[len(rows) // 4]
        end = rows[-1]
        lines.append(
            f"| {name} | {warm[1]:.1f} MiB | {end[1]:.1f} MiB | {end[1] - warm[1]:+.1f} MiB "
            f"| {warm[2]} | {end[2]} |"
        )
    _, turns, failed = samples.rows["load: turns / failed"][0]
    command = f"python -m bench.soak {sessions} {minutes:g}"
    return (
        f"{machine()}\n\nCommand: `{command}` (`python -m bench soak`, part of "
        f"`make bench`, runs 50 sessions for 3 minutes): {sessions} sessions streaming "
        f"real-time audio turns to `serve --backend mock --transceivers 2` for {minutes:g} "
        "minutes; every process "
        f"sampled every {SAMPLE_S:g} s. Turns: {int(turns)}, of which {failed} failed.\n\n"
        + "\n".join(lines)
    )


def main(sessions: int = 50, minutes: float = 3.0) -> str:
    with relay_server("--backend", "mock", "--transceivers", "2") as server:
        pids = {"relay": server.process.pid}
        for index, child in enumerate(sorted(children(server.process.pid))):
            pids[f"transceiver {index + 1}"] = child
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        samples = loop.run(soak(url, pids, sessions, minutes))
    body = report(samples, sessions, minutes)
    print(body)
    write_section("Soak: memory and file descriptors", body)
    return body


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 50, float(args[1]) if len(args) > 1 else 3.0)
