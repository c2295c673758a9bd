"""Voice-to-voice latency of the local pipeline with the bundled models.

Spoken questions (synthesized with piper, silence trimmed) are streamed in real time
in 20 ms chunks, followed by streamed silence, through the official SDK. For each
turn: end of speech -> first ``response.output_audio.delta``, measured by the
client, plus the server's per-stage times from its per-turn log line.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time

import httpx
import numpy as np
from openai import AsyncOpenAI

from bench.harness import RunningServer, relay_server
from bench.stats import machine, percentile, write_section
from models.audio import pcm16_to_array, resample
from models.tts import PiperTts

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you tell me a joke?",
    "What color is the sky?",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "Name a large animal.",
    "What day comes after Monday?",
    "Where do penguins live?",
    "How are you today?",
    "What is the boiling point of water?",
    "Say something nice.",
]
CHUNK_MS = 20
STAGES = ("stt_done", "llm_first_token", "tts_first_audio", "first_audio")
_TURN = re.compile(r"turn session=\S+ response=(\S+) (.*)")


def spoken(tts: PiperTts, text: str) -> bytes:
    """Piper's speech as PCM16 24 kHz, with the silence trimmed off both ends."""
    pcm = resample(tts.synthesize(text), tts.sample_rate_hz, 24000)
    samples = pcm16_to_array(pcm)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 500)
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud.size else pcm


async def stream(conn: object, pcm: bytes, clock: list[float]) -> None:
    """Send ``pcm`` in real time (20 ms chunks on a monotonic clock)."""
    step = 48 * CHUNK_MS
    for offset in range(0, len(pcm), step):
        clock[0] += CHUNK_MS / 1000
        delay = clock[0] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = base64.b64encode(pcm[offset : offset + step]).decode()
        await conn.input_audio_buffer.append(audio=chunk)  # type: ignore[attr-defined]


async def one_turn(conn: object, speech: bytes) -> tuple[float, str]:
    clock = [time.monotonic()]
    await stream(conn, b"\0\0" * 24 * 300 + speech, clock)
    speech_end = time.monotonic()
    first: float | None = None
    response_id = ""

    async def silence() -> None:
        while True:
            await stream(conn, b"\0\0" * 24 * 200, clock)

    feeder = asyncio.create_task(silence())
    try:
        async for event in conn:  # type: ignore[attr-defined]
            if event.type == "response.output_audio.delta" and first is None:
                first = time.monotonic()
                response_id = event.response_id
            if event.type == "response.done":
                break
    finally:
        feeder.cancel()
    assert first is not None, "no audio in the response"
    return (first - speech_end) * 1000, response_id


async def session(
    server: RunningServer, clips: list[bytes], name: str
) -> tuple[list[float], list[str]]:
    latencies, ids = [], []
    client = AsyncOpenAI(api_key="sk-bench", base_url=server.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        for clip in clips:
            latency, rid = await one_turn(conn, clip)
            latencies.append(latency)
            ids.append(rid)
            print(f"  {name} turn {len(ids):2d}: {latency:6.0f} ms", flush=True)
    return latencies, ids


async def run(server: RunningServer, clips: list[list[bytes]]) -> dict[str, list[float]]:
    """One session per list of clips, all at once; latencies and server stage times."""
    outcomes = await asyncio.gather(
        *(session(server, c, f"session {i + 1}") for i, c in enumerate(clips))
    )
    results: dict[str, list[float]] = {
        "end_of_speech_to_first_delta": [x for lat, _ in outcomes for x in lat]
    }
    ids = {rid for _, rids in outcomes for rid in rids}
    await asyncio.sleep(0.5)  # let the last log lines arrive
    for line in server.lines:
        match = _TURN.search(line)
        if match and match.group(1) in ids:
            for stage, value in re.findall(r"(\w+)=(-?\d+)ms", match.group(2)):
                results.setdefault(stage, []).append(float(value))
    return results


# The relay <-> transceiver link secret of the served stack: the bench asks a transceiver
# for its /load itself.
LINK_SECRET = secrets.token_urlsafe(32)


def loop_lag(server: RunningServer) -> dict[str, float]:
    """The transceiver's event-loop lag over the last minute (from its /load)."""
    status = httpx.get(f"http://127.0.0.1:{server.port}/status").json()
    url = status["transceivers"][0]["url"].replace("ws://", "http://")
    headers = {"Authorization": f"Bearer {LINK_SECRET}"}
    return dict(httpx.get(f"{url}/load", headers=headers).json()["loop_lag"])


def table(results: dict[str, list[float]]) -> str:
    rows = ["| stage (ms after end of speech) | p50 | p90 | n |", "|---|---:|---:|---:|"]
    names = {
        "stt_done": "STT done",
        "llm_first_token": "LLM first token",
        "tts_first_audio": "TTS first audio",
        "first_audio": "first audio delta sent (server)",
        "end_of_speech_to_first_delta": "**first audio delta received (client)**",
    }
    for key in (*STAGES, "end_of_speech_to_first_delta"):
        values = results.get(key, [])
        rows.append(
            f"| {names[key]} | {percentile(values, 50):.0f} | {percentile(values, 90):.0f} "
            f"| {len(values)} |"
        )
    return "\n".join(rows)


def main(turns: int = len(QUESTIONS), concurrent: int = 3) -> str:
    print("voice-to-voice: local pipeline, bundled models, real-time 20 ms chunks", flush=True)
    tts = PiperTts()
    clips = [spoken(tts, q) for q in QUESTIONS[:turns]]
    with relay_server("--backend", "local", env={"RELAY_LINK_SECRET": LINK_SECRET}) as server:
        single = asyncio.run(run(server, [clips]))
        print(table(single), flush=True)
        print(f"{concurrent} concurrent sessions, 3 turns each", flush=True)
        many = asyncio.run(run(server, [clips[i : i + 3] for i in range(concurrent)]))
        lag = loop_lag(server)
        print(table(many), flush=True)
    body = (
        f"{machine()}\n\nCommand: `make bench` (or `python -m bench voice`). Spoken questions "
        "(piper, silence trimmed) streamed in real time in 20 ms chunks; default 500 ms silence "
        "window; speculative STT and preemptive replies on, so the LLM and TTS stages can "
        "come before 'STT done' (when the turn is committed and the response starts). "
        "Target: p50 of the last row under 800 ms.\n\n"
        f"One session, {turns} turns:\n\n{table(single)}\n\n"
        f"{concurrent} sessions at once, 3 turns each (one transceiver, 2 cores shared):\n\n"
        f"{table(many)}\n\nTransceiver event-loop lag over the run (a 50 ms timer's lateness): "
        f"p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms."
    )
    write_section("Voice-to-voice latency (local pipeline)", body)
    return body


if __name__ == "__main__":
    main()
