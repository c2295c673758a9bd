"""``serve``: start N transceiver processes, keep them alive, stop them with the relay.

The relay and its transceivers share a link secret (``RELAY_LINK_SECRET``: the one in the
environment, else a random one per run). Each transceiver gets it in its environment, never
on its command line, which every local user can read in the process list.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import time

import httpx

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
LINK_SECRET_ENV = "RELAY_LINK_SECRET"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def link_secret() -> str:
    """The link secret of ``serve`` when none is given: ``RELAY_LINK_SECRET`` if set, else a
    new random one."""
    return os.environ.get(LINK_SECRET_ENV) or secrets.token_urlsafe(32)


class TransceiverProcess:
    def __init__(self, host: str, port: int, args: list[str]) -> None:
        self.host = host
        self.port = port
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.link_secret: str | None = None  # set by the Supervisor

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "transceiver",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
            preexec_fn=_die_with_parent,
            env=self._env(),
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RELAY_LINK_SOCKET", None)  # serve hands out one socket each, or none
        if self.link_secret is not None:
            env[LINK_SECRET_ENV] = self.link_secret
        return env

    async def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(
                        f"transceiver on port {self.port} exited with {self.process.returncode}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (
                        await client.get(f"http://{self.host}:{self.port}/healthz")
                    ).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"transceiver on port {self.port} did not become healthy")

    async def stop(self, grace_s: float = 10.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            process.kill()
            await process.wait()


class Supervisor:
    def __init__(self, processes: list[TransceiverProcess], secret: str | None = None) -> None:
        """``secret``: the link secret (default: :func:`link_secret`)."""
        self.link_secret = secret or link_secret()
        for process in processes:
            process.link_secret = self.link_secret
        self.processes = processes
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, health_timeout_s: float) -> None:
        await asyncio.gather(*(p.start() for p in self.processes))
        await asyncio.gather(*(p.wait_healthy(health_timeout_s) for p in self.processes))
        self._tasks = [asyncio.create_task(self._watch(p)) for p in self.processes]

    async def _watch(self, proc: TransceiverProcess) -> None:
        while not self._stopping:
            assert proc.process is not None
            code = await proc.process.wait()
            if self._stopping:
                return
            proc.restarts += 1
            log.error("transceiver on port %d exited with %s; restarting", proc.port, code)
            await asyncio.sleep(min(5.0, 0.2 * proc.restarts))
            await proc.start()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in self.processes))
