"""``python -m bench.floor [SESSIONS] [ROUNDS]``: the relay's CPU a frame when it does less,
to tell what reading client frames costs from what forwarding them and waking for them
cost. Prints; writes nothing; not part of ``make bench``. ``python -m bench.floor overhead
[ROUNDS]``: what pacing costs in latency instead (bench/overhead.py's relay overhead at 100
sessions, as is and paced 2 ms, alternated).

Alternated runs (ROUNDS, default 2) of bench/frames.py's measurement at SESSIONS real-time
audio sessions (default 50, 15 s each), every run a fresh ``serve --backend mock
--no-mock-realtime --transceivers 1`` whose relay process runs one of:

- ``as is``: the relay's code unchanged;
- ``read only``: each client frame is read, parsed, unmasked and counted on the direct
  path (relay/direct.py), then dropped: nothing reaches the transceiver, so no session gets
  answers (its frames are the client's alone, and the run lasts until the load
  generator's sessions give up waiting for a response, about a minute);
- ``bytes only``: less still: once a session is attached to the direct path, each read's
  bytes are counted as frames by their length (every frame of this load, an append of
  20 ms, is the same size on the wire: :func:`frame_wire_bytes`) and dropped, nothing
  parsed or unmasked: what is left is the event loop's wake-up, the read and a few Python
  calls a read: the floor, for this load, of a relay on a Python event loop that reads
  its clients' frames as they come (without waiting to batch them across wake-ups, as
  pacing does). Only client frames are counted, where ``as is`` also counts the
  transceiver's frames back, which share its wake-ups;
- ``paced N ms``: unchanged, except that after a loop iteration that read client data the
  loop sleeps N ms, so that its next wait finds the frames of that time together: fewer
  wake-ups, each frame up to N ms later. (Not in the relay: at 2 ms it added 1.3-2.2 ms to
  the relay's p50 overhead at 100 sessions, against a target of +1 ms; README, "frames".)

Only the relay process is changed (``serve`` starts the transceiver as its own program),
and it imports nothing more than the relay does: the measuring code is imported by the
functions that measure.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

MODE = "BENCH_FLOOR_MODE"
FRAME_BYTES = "BENCH_FLOOR_FRAME_BYTES"  # bytes only: the size of each client frame
MODES = ("as is", "read only", "bytes only", "paced 2 ms", "paced 8 ms")
RUN_S = 15.0


def _read_only() -> None:
    from relay.forward import DirectSession

    def on_message(self: DirectSession, payload: bytes, text: bool) -> None:
        self.events_in.inc()

    DirectSession.on_message = on_message  # type: ignore[method-assign]


def frame_wire_bytes() -> int:
    """The size on the wire of each of the load generator's client frames: a masked text
    frame (2 + 2 bytes of header for 126 to 65535 bytes of payload, 4 of mask) of a 20 ms
    append, speech and silence alike (the same number of samples)."""
    from loadgen.client import CHUNK_MS, SimulatedClient

    size = len(SimulatedClient._append(b"\0" * 48 * CHUNK_MS))
    assert 126 <= size < 1 << 16
    return size + 8


def _bytes_only(frame_bytes: int) -> None:
    from relay.direct import DirectWebSocketProtocol

    _read_only()  # frames read before the session attached: counted and dropped
    data_received = DirectWebSocketProtocol.data_received
    left: dict[int, int] = {}  # bytes of a frame cut by a read, by connection

    def counted(self: Any, data: bytes) -> None:
        session = getattr(self._on_message, "__self__", None)  # none once detached
        if session is None or self.close_sent:
            data_received(self, data)
            return
        frames, left[id(self)] = divmod(left.get(id(self), 0) + len(data), frame_bytes)
        session.events_in.inc(frames)

    DirectWebSocketProtocol.data_received = counted  # type: ignore[method-assign]


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
    elif mode == "bytes only":
        _bytes_only(int(os.environ[FRAME_BYTES]))
    elif mode.startswith("paced "):
        _paced(float(mode.split()[1]) / 1000)
    elif mode != "as is":
        raise SystemExit(f"unknown mode {mode!r}")


def run(mode: str, sessions: int) -> str:
    from bench.frames import measure
    from bench.harness import relay_server

    env = {MODE: mode, FRAME_BYTES: str(frame_wire_bytes())}
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


def overhead(rounds: int = 2, sessions: int = 100) -> None:
    """bench/overhead.py's relay overhead at ``sessions``, as is and paced 2 ms, each in
    fresh processes (a transceiver, and a relay in front of it as ``bench relay`` runs
    them); every run's round trips are printed as ``bench relay`` gives them."""
    from bench.overhead import overhead_at, servers

    for round_ in range(rounds):
        for mode in ("as is", "paced 2 ms"):
            os.environ[MODE] = mode  # the relay's process reads it; the transceiver's does not
            with servers(relay_module="bench.floor") as (direct, relayed):
                [(p50, p99)] = overhead_at(direct, relayed, [], (sessions,)).values()
            print(
                f"round {round_ + 1}, {mode}: relay overhead at {sessions} sessions "
                f"{p50:+.2f} ms p50, {p99:+.2f} ms p99",
                flush=True,
            )
    os.environ.pop(MODE, None)


if __name__ == "__main__":
    if os.environ.get(MODE) and sys.argv[1:2] in (["serve"], ["relay"]):  # a run's relay
        from relay.cli import main as relay_main

        _patch(os.environ[MODE])
        relay_main(sys.argv[1:])
    elif sys.argv[1:2] == ["overhead"]:
        overhead(*map(int, sys.argv[2:]))
    else:
        main(*map(int, sys.argv[1:]))
