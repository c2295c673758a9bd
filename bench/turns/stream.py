"""Streaming the turn set's clips in real time, one Realtime session per clip, several at
once, and recording the turn detection events with their arrival times."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from bench.turns.audio import Clip, ms

CHUNK_MS = 20
DRAIN_S = 0.4  # after the last chunk: an end-of-turn answer in flight (~0.1 s) still counts
SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
SERVER_VAD_SILENCE_MS = 500  # server_vad's default silence_duration_ms


@dataclass(frozen=True)
class Detector:
    """One turn detection configuration: ``server_vad`` or ``semantic_vad`` + eagerness."""

    name: str
    eagerness: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.eagerness is None else f"{self.name} {self.eagerness}"

    def turn_detection(self, create_response: bool) -> dict[str, Any]:
        td: dict[str, Any] = {"type": self.name, "create_response": create_response}
        if self.eagerness is not None:
            td["eagerness"] = self.eagerness
        return td

    @property
    def max_wait_ms(self) -> int:
        """The longest silence after which this detector ends a turn whatever happens."""
        if self.eagerness is None:
            return SERVER_VAD_SILENCE_MS
        return SEMANTIC_MAX_WAIT_MS[self.eagerness]


@dataclass
class Outcome:
    clip: Clip
    detector: Detector
    t0: float = 0.0  # monotonic time at audio position 0
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, event_type: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == event_type]

    def wall_ms(self, arrival: float, audio_ms: float) -> float:
        """How long after audio position ``audio_ms`` was spoken ``arrival`` came."""
        return (arrival - self.t0) * 1000 - audio_ms


def stop_rule(clip: Clip, detector: Detector, local: bool) -> tuple[float, str | None]:
    """How much of ``clip`` to send at most (ms), and the event type that ends it early."""
    if local:
        return clip.content_end_ms + detector.max_wait_ms + 3000, "response.output_audio.delta"
    if clip.kind == "complete":
        return (
            clip.content_end_ms + detector.max_wait_ms + 1000,
            "input_audio_buffer.speech_stopped",
        )
    if clip.kind == "paused":
        return clip.content_end_ms + 300, None
    return ms(len(clip.pcm)), None


async def _read(conn: Any, outcome: Outcome, until: str | None, done: asyncio.Event) -> None:
    while True:
        event = json.loads(await conn.recv_bytes())
        outcome.events.append((time.monotonic(), event))
        if event["type"] == until:
            done.set()


async def _play(
    conn: Any, pcm: bytes, limit_ms: float, outcome: Outcome, done: asyncio.Event
) -> None:
    step = 48 * CHUNK_MS
    end = min(len(pcm), int(limit_ms * 48))
    outcome.t0 = time.monotonic()
    for k, offset in enumerate(range(0, end, step)):
        if done.is_set():
            return
        delay = outcome.t0 + (k + 1) * CHUNK_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = base64.b64encode(pcm[offset : min(end, offset + step)]).decode()
        await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
    try:
        await asyncio.wait_for(done.wait(), DRAIN_S)
    except TimeoutError:
        pass


async def run_clip(base_url: str, clip: Clip, detector: Detector, local: bool) -> Outcome:
    outcome = Outcome(clip, detector)
    limit_ms, until = stop_rule(clip, detector, local)
    update: dict[str, Any] = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"] if local else ["text"],
            "audio": {"input": {"turn_detection": detector.turn_detection(local)}},
        },
    }
    client = AsyncOpenAI(api_key="sk-bench", base_url=base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.send(update)  # type: ignore[arg-type]
        while json.loads(await conn.recv_bytes())["type"] != "session.updated":
            pass
        done = asyncio.Event()
        reader = asyncio.create_task(_read(conn, outcome, until, done))
        try:
            await _play(conn, clip.pcm, limit_ms, outcome, done)
        finally:
            reader.cancel()
    return outcome


async def run_all(
    base_url: str, clips: list[Clip], detector: Detector, concurrency: int, local: bool = False
) -> list[Outcome]:
    """Every clip through ``detector``, ``concurrency`` sessions at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(clip: Clip) -> Outcome:
        async with gate:
            return await run_clip(base_url, clip, detector, local)

    return list(await asyncio.gather(*(one(c) for c in clips)))
