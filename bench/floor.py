"""``python -m bench.floor [SESSIONS] [ROUNDS]``: the relay's CPU a frame when it does less,
to tell what reading client frames costs from what forwarding them and waking for them
cost. Prints; writes nothing; not part of ``make bench``.

Alternated runs (ROUNDS, default 2) of bench/frames.py's measurement at SESSIONS real-time
audio sessions (default 50, 15 s each), every run a fresh ``serve --backend mock
--no-mock-realtime --transceivers 1`` whose relay process runs one of:

- ``as is``: the relay's code unchanged;
- ``read only``: each client frame is read, parsed, unmasked and counted on the direct
  path (relay/direct.py), then dropped: nothing reaches the transceiver, so no session gets
  answers (its frames are the client's alone, and the run lasts until the load
  generator's sessions give up waiting for a response, about a minute);
- ``paced N ms``: unchanged, except that after a loop iteration that read client data the
  loop sleeps N ms, so that its next wait finds the frames of that time together: fewer
  wake-ups, each frame up to N ms later. (Not in the relay: at 2 ms it put about 2.5 ms
  on the relay's p50 overhead at 100 sessions, against a target of 1; README, "frames".)

Only the relay process is changed (``serve`` starts the transceiver as its own program).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.frames import measure
from bench.harness import relay_server

MODE = "BENCH_FLOOR_MODE"
MODES = ("as is", "read only", "paced 2 ms", "paced 8 ms")
RUN_S = 15.0


def _read_only() -> None:
    from relay.forward import DirectSession

    def on_message(self: DirectSession, payload: bytes, text: bool) -> None:
        self.events_in.inc()

    DirectSession.on_message = on_message  # type: ignore[method-assign]


def _paced(sleep_s: float) -> None:
    """After an iteration that read client data, one sleep: queued two callbacks deep, so
    that what that iteration scheduled (link and client writes) runs before it."""
    from relay.direct import DirectWebSocketProtocol

    data_received = DirectWebSocketProtocol.data_received
    armed = False

    def sleep() -> None:
        nonlocal armed
        armed = False
        time.sleep(sleep_s)

    def paced(self: Any, data: bytes) -> None:
        nonlocal armed
        if not armed:
            armed = True
            self.loop.call_soon(self.loop.call_soon, sleep)
        data_received(self, data)

    DirectWebSocketProtocol.data_received = paced  # type: ignore[method-assign]


def _patch(mode: str) -> None:
    if mode == "read only":
        _read_only()
    elif mode.startswith("paced "):
        _paced(float(mode.split()[1]) / 1000)
    elif mode != "as is":
        raise SystemExit(f"unknown mode {mode!r}")


def run(mode: str, sessions: int) -> str:
    env = {MODE: mode}
    args = ("--backend", "mock", "--no-mock-realtime", "--transceivers", "1")
    with relay_server(*args, env=env, module="bench.floor") as server:
        measure(server, 5, 3.0)  # warm-up, not counted
        step = measure(server, sessions, RUN_S)
    return (
        f"relay {step.cell(step.relay)} us a frame, {step.per_wakeup(step.relay):.1f} frames "
        f"a wake-up; transceiver {step.cell(step.transceiver)} us; {step.frames} frames"
    )


def main(sessions: int = 50, rounds: int = 2) -> None:
    for round_ in range(rounds):
        for mode in MODES:
            print(f"round {round_ + 1}, {mode}: {run(mode, sessions)}", flush=True)


if __name__ == "__main__":
    if os.environ.get(MODE) and sys.argv[1:2] == ["serve"]:  # the relay of one run
        from relay.cli import main as relay_main

        _patch(os.environ[MODE])
        relay_main(sys.argv[1:])
    else:
        main(*map(int, sys.argv[1:]))
