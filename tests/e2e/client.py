"""A recorder around the official SDK connection: raw events, waits with timeouts."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np

from models.synth import speech as speech  # the tests' speech: the mock's own voice
from tests.invariants import check_stream, validate_with_sdk


class Recorder:
    def __init__(self, connection: Any, *, beta: bool = False) -> None:
        self.conn = connection
        self.beta = beta
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(event)

    async def next(self, timeout_s: float = 15.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout_s)
        event: dict[str, Any] = json.loads(raw)
        validate_with_sdk(event, beta=self.beta)
        self.events.append(event)
        return event

    async def until(self, event_type: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """The next ``event_type``; ``TimeoutError`` naming it and the last events seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                event = await self.next(max(0.01, deadline - loop.time()))
            except TimeoutError:
                seen = [e["type"] for e in self.events[-15:]]
                message = f"no {event_type} within {timeout_s} s; last seen {seen}"
                raise TimeoutError(message) from None
            if event["type"] == event_type:
                return event

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    def check(self) -> None:
        check_stream(self.events, beta=self.beta)


def pink(seconds: float, level: float, seed: int = 7) -> bytes:
    """Pink noise at RMS ``level`` (PCM16 units; 1000 is about -30 dBFS), 24 kHz."""
    n = int(24_000 * seconds)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / 24_000), 20.0))
    noise = np.fft.irfft(spectrum, n)
    noise *= level / np.sqrt(np.mean(noise**2))
    return bytes(np.clip(noise, -32768, 32767).astype("<i2").tobytes())


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (24 * ms)


async def append_audio(rec: Recorder, pcm16: bytes, chunk_ms: int = 20) -> None:
    step = 48 * chunk_ms
    for offset in range(0, len(pcm16), step):
        chunk = base64.b64encode(pcm16[offset : offset + step]).decode()
        await rec.send({"type": "input_audio_buffer.append", "audio": chunk})


def decode_audio(
    events: list[dict[str, Any]], delta_type: str = "response.output_audio.delta"
) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == delta_type)


def user_message(text: str) -> dict[str, Any]:
    """The ``conversation.item.create`` event of a user text message."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


async def user_text(rec: Recorder, text: str) -> None:
    await rec.send(user_message(text))


# The function tool of the weather scenarios (tests/e2e/mock_script.yaml answers with it).
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def long_audio_response(rec: Recorder) -> dict[str, Any]:
    """Ask for a long spoken reply; return its ``response.created`` once audio flows."""
    await user_text(rec, "tell me a long story")
    await rec.send({"type": "response.create"})
    await rec.until("response.output_audio.delta")
    return rec.of_type("response.created")[-1]
