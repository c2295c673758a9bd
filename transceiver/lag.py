"""Event-loop lag: how late a 50 ms timer fires. Blocking work on the loop shows up here."""

from __future__ import annotations

import asyncio
import time
from collections import deque

INTERVAL_S = 0.05


class LoopLagMonitor:
    def __init__(self, window: int = 1200) -> None:
        self._samples: deque[float] = deque(maxlen=window)  # the last minute
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(INTERVAL_S)
            lag_ms = max(0.0, (time.perf_counter() - before - INTERVAL_S) * 1000)
            self._samples.append(lag_ms)
            self.max_ms = max(self.max_ms, lag_ms)

    def stats(self) -> dict[str, float]:
        ordered = sorted(self._samples)
        if not ordered:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(self.max_ms, 2),
        }

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
