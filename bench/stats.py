"""Percentiles and the results file."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")
_RESULTS = ":(top,exclude)bench/results.md"  # a pathspec: every path but this one


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for a benchmark's header."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("faster-whisper", "piper-tts", "llama_cpp_python", "websockets", "uvicorn")
        if _installed(name)
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(  # a run of code not committed says so (the figures that
        # an earlier benchmark of the same ``make bench`` wrote are not code)
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", _RESULTS],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if commit and changed:
        commit += " with uncommitted changes"
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu}, {os.cpu_count()} "
        f"cores; Python {sys.version.split()[0]}; {versions}; commit {commit or '?'}"
    )


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def write_section(title: str, body: str) -> None:
    """Replace (or add) ``## title`` in bench/results.md."""
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmark results\n\nWritten by `make bench`.\n"
    )
    header = f"## {title}\n"
    section = f"{header}\n{body.rstrip()}\n\n"
    if header in text:
        start = text.index(header)
        end = text.find("\n## ", start + len(header))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
