"""``python -m bench proxy-turns``: the audio seconds ``--local-turn-detection`` sends
upstream against those the client sent, on a conversation with natural pauses.

The proxy (a transceiver, ``--backend openai``) runs in front of the mock on loopback; a
client streams four utterances (models/synth.py speech) with 2-4 s of silence before
each, at 4x real time, with the session's turn detection; the figures are the
transceiver's ``realtime_transceiver_upstream_audio_seconds_total``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import RunningServer, relay_server
from bench.stats import machine, write_section
from models.synth import speech

LINK_SECRET = "link-secret-of-the-proxy-turn-bench"
UPSTREAM_KEY = "sk-upstream-of-the-proxy-turn-bench"
MOCK = ("--backend", "mock", "--mock-first-delta-ms", "20", "--mock-words-per-minute", "900")
# (silence before, words) per utterance; then TRAILING_MS of silence.
UTTERANCES = (
    (2500, "hello there I would like to book a table for two"),
    (3000, "tomorrow evening at eight if you can"),
    (2000, "and could it be near the window please"),
    (4000, "thank you very much"),
)
TRAILING_MS = 2500
SPEED = 4.0  # times real time
CHUNK_MS = 100


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (24 * ms)


def conversation() -> tuple[bytes, list[tuple[float, float]]]:
    """The client's audio (PCM16, 24 kHz), and where each utterance's speech is (ms)."""
    audio, spans = b"", []
    for pause_ms, words in UTTERANCES:
        audio += silence(pause_ms)
        said = speech(words)
        spans.append((len(audio) / 48, (len(audio) + len(said)) / 48))
        audio += said
    return audio + silence(TRAILING_MS), spans


def append_events(audio: bytes, chunk_ms: int = CHUNK_MS) -> Iterator[dict[str, Any]]:
    step = 48 * chunk_ms
    for offset in range(0, len(audio), step):
        chunk = base64.b64encode(audio[offset : offset + step]).decode()
        yield {"type": "input_audio_buffer.append", "audio": chunk}


async def stream(send: Any, audio: bytes, speed: float = SPEED) -> None:
    """Append ``audio`` with ``send`` in 100 ms chunks at ``speed`` times real time, as a
    microphone would (an end-of-turn model decides while audio keeps coming)."""
    start = time.monotonic()
    for n, event in enumerate(append_events(audio), 1):
        await send(event)
        ahead = n * CHUNK_MS / 1000 / speed - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)


@contextlib.contextmanager
def turn_proxy(
    upstream_url: str, *extra: str, secret: str = LINK_SECRET, key: str = UPSTREAM_KEY
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """A relay, and its transceiver: the openai proxy in front of ``upstream_url``."""
    args = ("--backend", "openai", "--upstream-url", upstream_url, *extra)
    env = {"OPENAI_API_KEY": key, "RELAY_LINK_SECRET": secret}
    with relay_server(*args, command="transceiver", env=env) as member:
        relay_args = ("--transceiver", f"ws://127.0.0.1:{member.port}", "--api-keys", "sk-client")
        with relay_server(*relay_args, command="relay", env=env) as relay:
            yield relay, member


async def audio_seconds(member: RunningServer, secret: str = LINK_SECRET) -> dict[str, float]:
    """``realtime_transceiver_upstream_audio_seconds_total``, by direction."""
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = await http.get(
            f"{member.base_url}/metrics", headers={"Authorization": f"Bearer {secret}"}
        )
    prefix = 'realtime_transceiver_upstream_audio_seconds_total{direction="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in metrics.text.splitlines()
        if line.startswith(prefix)
    }


async def _session(relay: RunningServer, td: dict[str, Any], audio: bytes) -> int:
    """One conversation; the number of turns the client saw committed."""
    url = f"{relay.ws_base_url}/realtime?model=gpt-realtime"
    headers = {"Authorization": "Bearer sk-client"}
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        update: dict[str, Any] = {"type": "realtime", "output_modalities": ["text"]}
        update["audio"] = {"input": {"turn_detection": td}}
        await ws.send(json.dumps({"type": "session.update", "session": update}))

        async def send(event: dict[str, Any]) -> None:
            await ws.send(json.dumps(event))

        reader = asyncio.create_task(_count_commits(ws))
        await stream(send, audio)
        await asyncio.sleep(1.0)  # the last turn's commit and response
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await reader
        return 0


async def _count_commits(ws: ClientConnection) -> int:
    commits = 0
    try:
        async for frame in ws:
            commits += json.loads(frame)["type"] == "input_audio_buffer.committed"
    except asyncio.CancelledError:
        return commits
    return commits


async def _measure(td: dict[str, Any]) -> tuple[int, dict[str, float]]:
    audio, _ = conversation()
    with relay_server(*MOCK, "--api-keys", UPSTREAM_KEY) as upstream:
        url = f"{upstream.ws_base_url}/realtime"
        with turn_proxy(url, "--local-turn-detection") as (relay, member):
            commits = await _session(relay, td, audio)
            return commits, await audio_seconds(member)


def main() -> str:
    rows = []
    for td in ({"type": "server_vad"}, {"type": "semantic_vad", "eagerness": "auto"}):
        commits, seconds = asyncio.run(_measure(td))
        received, sent = seconds.get("received", 0.0), seconds.get("sent", 0.0)
        saved = 1 - sent / received if received else float("nan")
        rows.append(
            f"| `{td['type']}` | {len(UTTERANCES)} | {commits} | {received:.1f} s | "
            f"{sent:.1f} s | {saved:.0%} |"
        )
    body = "\n".join(
        [
            "Command: `python -m bench proxy-turns`. " + machine() + ".",
            "",
            "`--backend openai --local-turn-detection` in front of the mock: one client "
            f"streams {len(UTTERANCES)} utterances with 2-4 s of silence before each (and "
            f"{TRAILING_MS / 1000:g} s after), at {SPEED:g}x real time; the transceiver's "
            "`realtime_transceiver_upstream_audio_seconds_total`. Target: at least 40% "
            "fewer seconds upstream.",
            "",
            "| turn detection | utterances | turns committed | received from the client | "
            "sent upstream | fewer |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    write_section("Proxy: local turn detection", body)
    print(body)
    return body


if __name__ == "__main__":
    main()
