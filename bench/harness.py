"""``realtime-relay serve`` as a subprocess on loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

READY = "realtime-relay ready: base_url="
# Tests and benchmarks send traffic to loopback only: WebRTC calls too (relay/ice.py).
LOOPBACK_ONLY = {"RELAY_WEBRTC_HOST_ADDRESSES": "127.0.0.1"}
TRANSCEIVER_READY = "transceiver ready on ws://"


def free_port() -> int:
    """A loopback port that no TCP or UDP socket holds now: SIP listens on both, and a
    port free for TCP may still be some UDP socket's (then a SIP phone on it cannot
    start)."""
    while True:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    port: int
    base_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def ws_base_url(self) -> str:
        return self.base_url.replace("http://", "ws://").replace("https://", "wss://")


@contextlib.contextmanager
def relay_server(
    *args: str,
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
    command: str = "serve",
    port: int | None = None,
    module: str = "relay.cli",
) -> Iterator[RunningServer]:
    """Start ``realtime-relay COMMAND ARGS`` on a free port; stop it with SIGTERM.
    (``module``: run as ``python -m MODULE COMMAND ARGS`` instead, for bench/floor.py.)

    ``serve`` and ``relay`` are ready at their banner; ``transceiver`` at its ready line
    (its ``base_url`` is then ``http://127.0.0.1:PORT``).
    """
    port = port or free_port()
    cmd = [sys.executable, "-m", module, command, "--port", str(port), *args]
    marker = TRANSCEIVER_READY if command == "transceiver" else READY
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **LOOPBACK_ONLY, **(env or {})},
    )
    assert process.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            if marker in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server did not start:\n" + "\n".join(lines[-50:]))
    if command == "transceiver":
        base_url = f"http://127.0.0.1:{port}"
    else:
        banner = next(line for line in lines if line.startswith(READY))
        base_url = banner[len(READY) :].strip()
    server = RunningServer(process, port, base_url, lines)
    try:
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)
        process.stdout.close()
