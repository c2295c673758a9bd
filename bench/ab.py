"""``python -m bench.ab REV [SESSIONS] [ROUNDS]``: bench/frames.py's measurement for the
code of git revision ``REV`` against the working tree, runs alternated. Prints; writes
nothing.

On a shared machine two runs minutes apart can differ by more than a change does
(docs/benchmarks.md), so a change to the frame path is judged by alternated runs:
``ROUNDS`` (default 3) pairs of 15 s runs at ``SESSIONS`` (default 50) real-time audio
sessions, each in a fresh ``serve --backend mock --no-mock-realtime --transceivers 1``
started from that tree (a git worktree of ``REV`` in a temporary directory, with this
checkout's ``.venv``), the load generator's code included. Each line: CPU us a frame of the
relay, the transceiver (system part in brackets) and the load generator, and the
transceiver's page faults a frame.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One run, in the tree it is started in (its code first on sys.path). It uses only what
# every tree's bench/frames.py has (``measure`` and its frame count), and reads the servers'
# CPU and page faults from /proc itself, so a revision from before this file works too.
_RUN = """
import sys
from pathlib import Path
from bench.frames import measure
from bench.harness import relay_server
from bench.soak import children
sessions = int(sys.argv[1])
def stat(pid):  # minor faults, user and system clock ticks
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[11]), int(fields[12])
with relay_server("--backend", "mock", "--no-mock-realtime", "--transceivers", "1") as server:
    measure(server, 5, 3.0)  # warm-up, not counted
    pids = (server.process.pid, *children(server.process.pid))
    before = [stat(pid) for pid in pids]
    s = measure(server, sessions, 15.0)
    after = [stat(pid) for pid in pids]
ticks = __import__("os").sysconf("SC_CLK_TCK")
us = lambda n: n / ticks / max(s.frames, 1) * 1e6
(rf, ru, rs), (tf, tu, ts) = [[b - a for a, b in zip(x, y)] for x, y in zip(before, after)]
print(
    f"RESULT relay {us(ru + rs):.0f} ({us(rs):.0f}) us, transceiver {us(tu + ts):.0f} "
    f"({us(ts):.0f}) us, load generator {s.loadgen_s / max(s.frames, 1) * 1e6:.0f} us a "
    f"frame; {tf / max(s.frames, 1):.2f} page faults a frame; {s.errors} errors"
)
"""


def run_in(tree: Path, sessions: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(sessions)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return lines[-1].removeprefix("RESULT ") if lines else f"failed: {done.stderr[-300:]}"


def main(rev: str, sessions: int = 50, rounds: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True
        )
        try:
            (tree / ".venv").symlink_to(ROOT / ".venv")
            trees = {rev: tree, "working tree": ROOT}
            for round_ in range(rounds):
                for name, path in trees.items():
                    print(f"round {round_ + 1}, {name}: {run_in(path, sessions)}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
