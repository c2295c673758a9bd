"""Waiting for a condition, bounded: the tests' one way to wait (never a fixed sleep); and
for a process, bounded, with its output if it overruns."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` (sync or async) until it returns a truthy value, and return that
    value; ``TimeoutError`` naming ``what`` if it has not within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(interval_s)


def run_process(
    command: list[str], timeout_s: float, **options: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with its output captured as text; a process still running after
    ``timeout_s`` is killed and the test fails with what it printed (``TimeoutExpired``
    alone says only that it timed out)."""
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False, **options
        )
    except subprocess.TimeoutExpired as exc:
        said = [
            f"{name}:\n{_text(out)[-4000:]}"
            for name, out in (("stdout", exc.stdout), ("stderr", exc.stderr))
        ]
        raise AssertionError(
            f"{' '.join(command)[:200]} did not finish within {timeout_s} s\n" + "\n".join(said)
        ) from None


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
