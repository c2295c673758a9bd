"""Relay overhead and mock capacity.

Sessions stream real-time audio (20 ms appends, server VAD on) and ping every 100 ms
with ``input_audio_buffer.clear`` (answered by ``input_audio_buffer.cleared``); the
ping round trip is the event latency. The same load runs straight to a transceiver and
through the relay, so the difference is the relay's cost. Everything, the load
generator included, shares this machine's cores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
from websockets.asyncio.client import connect

from bench.harness import free_port
from bench.stats import machine, percentile, write_section
from transceiver.protocol.contract import SessionSpec

APPEND = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 960).decode()}
)
PING = json.dumps({"type": "input_audio_buffer.clear"})
# The relay <-> transceiver link secret: both processes get it, and the direct sessions
# present it as the relay does.
LINK_SECRET = secrets.token_urlsafe(32)


@contextlib.contextmanager
def processes(*commands: list[str]) -> Iterator[None]:
    env = {**os.environ, "RELAY_LINK_SECRET": LINK_SECRET}
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for c in commands
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def session(url: str, rtts: list[float], stop: asyncio.Event, measure: asyncio.Event) -> bool:
    try:
        direct = "/v1/sessions" in url
        headers = {"Authorization": f"Bearer {LINK_SECRET}"} if direct else {}
        async with connect(
            url, max_size=None, compression=None, open_timeout=30, additional_headers=headers
        ) as ws:
            if direct:  # straight to the transceiver: open as the relay does
                await ws.send(SessionSpec(model="gpt-realtime").encode())
            await ws.recv()  # session.created
            pending: list[float] = []

            async def reader() -> None:
                async for raw in ws:
                    if isinstance(raw, str) and '"input_audio_buffer.cleared"' in raw:
                        sent = pending.pop(0)
                        if measure.is_set():
                            rtts.append((time.perf_counter() - sent) * 1000)

            read = asyncio.create_task(reader())
            clock = time.monotonic()
            tick = 0
            while not stop.is_set():
                clock += 0.02
                delay = clock - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(APPEND)
                tick += 1
                if tick % 5 == 0:
                    pending.append(time.perf_counter())
                    await ws.send(PING)
            read.cancel()
            return True
    except (OSError, TimeoutError):
        return False


async def measure_load(url: str, sessions: int, seconds: float = 5.0) -> tuple[list[float], int]:
    rtts: list[float] = []
    stop, measure = asyncio.Event(), asyncio.Event()
    tasks = []
    for index in range(sessions):
        tasks.append(asyncio.create_task(session(url, rtts, stop, measure)))
        if index % 20 == 19:
            await asyncio.sleep(0.05)  # ramp
    await asyncio.sleep(2.0)  # settle
    measure.set()
    await asyncio.sleep(seconds)
    stop.set()
    results = await asyncio.gather(*tasks)
    return rtts, sum(1 for ok in results if not ok)


def run_async(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


@contextlib.contextmanager
def servers(relay_module: str = "relay.cli") -> Iterator[tuple[str, str]]:
    """A mock transceiver and a relay in front of it, ready: the URLs for sessions straight
    to the transceiver and through the relay. ``relay_module``: the relay runs as
    ``python -m MODULE relay ...`` (bench/floor.py runs it changed)."""
    t_port, r_port = free_port(), free_port()
    python = sys.executable
    quiet = ["--log-level", "warning"]
    transceiver = [python, "-m", "transceiver", "--port", str(t_port), "--backend", "mock"]
    relay = [python, "-m", relay_module, "relay", "--port", str(r_port)]
    with processes(
        [*transceiver, *quiet], [*relay, "--transceiver", f"ws://127.0.0.1:{t_port}", *quiet]
    ):
        wait_http(f"http://127.0.0.1:{t_port}/healthz")
        wait_http(f"http://127.0.0.1:{r_port}/healthz")
        yield (
            f"ws://127.0.0.1:{t_port}/v1/sessions",
            f"ws://127.0.0.1:{r_port}/v1/realtime?model=gpt-realtime",
        )


def overhead_at(
    direct: str, relayed: str, rows: list[str], steps: tuple[int, ...] = (1, 100)
) -> dict[int, tuple[float, float]]:
    """Relay minus direct round trips (p50, p99) at each of ``steps`` sessions; a row
    each run."""
    overhead: dict[int, tuple[float, float]] = {}
    for sessions in steps:
        figures = {}
        for name, url in (("direct", direct), ("relay", relayed)):
            rtts, failed = run_async(measure_load(url, sessions))  # type: ignore[misc]
            p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
            figures[name] = (p50, p99)
            rows.append(f"| {name} | {sessions} | {p50:.2f} | {p99:.2f} | {len(rtts)} | {failed} |")
            print(rows[-1], flush=True)
        overhead[sessions] = (
            figures["relay"][0] - figures["direct"][0],
            figures["relay"][1] - figures["direct"][1],
        )
    return overhead


def _capacity(relayed: str, steps: tuple[int, ...], rows: list[str]) -> int:
    """The most sessions with p99 under 50 ms and none failed, trying ``steps`` in order."""
    capacity = 0
    for sessions in steps:
        rtts, failed = run_async(measure_load(relayed, sessions))  # type: ignore[misc]
        p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
        rows.append(f"| {sessions} | {p50:.1f} | {p99:.1f} | {failed} |")
        print(rows[-1], flush=True)
        if p99 >= 50 or failed:
            break
        capacity = sessions
    return capacity


def main(steps: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400)) -> str:
    rows = [
        "| path | sessions | p50 ms | p99 ms | pings | failed sessions |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cap_rows = [
        "| sessions (through the relay) | p50 ms | p99 ms | failed sessions |",
        "|---:|---:|---:|---:|",
    ]
    with servers() as (direct, relayed):
        overhead = overhead_at(direct, relayed, rows)
        capacity = _capacity(relayed, steps, cap_rows)
    lines = [
        f"| {n} sessions | {d50:+.2f} ms | {d99:+.2f} ms |" for n, (d50, d99) in overhead.items()
    ]
    body = (
        f"{machine()}\n\nCommand: `make bench` (or `python -m bench relay`). Each session "
        "streams real-time audio (20 ms appends, server VAD on) to the mock backend and pings "
        "every 100 ms; latency is the ping's round trip. The load generator runs on the same "
        "2 cores.\n\nRound trips:\n\n"
        + "\n".join(rows)
        + "\n\nRelay overhead (relay minus direct; target at most +1 ms p50, +5 ms p99):\n\n"
        "| load | p50 | p99 |\n|---|---:|---:|\n"
        + "\n".join(lines)
        + "\n\nCapacity (target: 300 sessions with p99 under 50 ms):\n\n"
        + "\n".join(cap_rows)
        + f"\n\n**Most concurrent real-time audio sessions with p99 under 50 ms: {capacity}.**"
    )
    write_section("Relay overhead and mock capacity", body)
    return body


if __name__ == "__main__":
    main()
