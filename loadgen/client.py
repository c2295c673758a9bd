"""``realtime-relay load``: N simulated Realtime clients against any Realtime server.

Each client streams audio in real time (20 ms chunks, then silence until the reply is
done) or sends text, waits for each response, and records: end of speech -> first
audio delta, commit -> ``response.created``, response duration, events per second,
errors and dropped sessions. Bounded in sessions and time; loopback or your own hosts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from models.audio import resample
from models.synth import speech
from transceiver.link import MaskKeys, apply_mask
from transceiver.protocol.wsframe import frame_header

CHUNK_MS = 20
MAX_SESSIONS = 2000
MAX_DURATION_S = 3600.0
RESPONSE_TIMEOUT_S = 60.0


@dataclass
class LoadOptions:
    url: str
    sessions: int = 1
    ramp_s: float = 0.0
    duration_s: float | None = None
    turns: int = 3
    text: bool = False
    audio: bytes = b""  # PCM16 24 kHz mono, for audio turns
    api_key: str | None = None
    model: str = "gpt-realtime"
    transport: str = "ws"  # or "webrtc"


@dataclass
class Figures:
    speech_end_to_first_audio_ms: list[float] = field(default_factory=list)
    commit_to_created_ms: list[float] = field(default_factory=list)
    first_delta_ms: list[float] = field(default_factory=list)  # text mode: create -> first delta
    response_ms: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    turns: int = 0
    failed_turns: int = 0
    error_events: int = 0
    dropped_sessions: int = 0
    events: int = 0
    active: int = 0
    finished: int = 0


SPOKEN_TEXT = "hello there how are you"  # 1.5 s of synthetic speech at 300 ms a word


def default_speech() -> bytes:
    """What each simulated client says without ``--audio``: PCM16 24 kHz, 1.5 s."""
    return speech(SPOKEN_TEXT, word_ms=300)


def read_wav(path: str) -> bytes:
    """A mono 16-bit WAV file as PCM16 24 kHz."""
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(samples.astype("<i2").tobytes(), rate, 24000)


_masks = MaskKeys()


def send_text_now(ws: ClientConnection, message: bytes) -> bool:
    """Write ``message`` (UTF-8) as one masked text frame on the connection's transport,
    as ``websockets``' ``send`` would, without its lock, its context and its copies (the
    load generator shares the machine it measures: its cost per frame counts). False when
    that cannot be done now (not open, closing, a fragmented send under way, the transport
    full): then ``send`` it, which waits or raises as it should."""
    protocol = ws.protocol
    if (
        protocol.state is not State.OPEN
        or ws.send_in_progress is not None
        or ws.paused
        or protocol.close_expected()
    ):
        return False
    mask = _masks.next()
    ws.transport.write(frame_header(len(message), text=True, mask=mask) + apply_mask(message, mask))
    return True


class SimulatedClient:
    """One Realtime client. ``figures`` is shared by all clients of a run."""

    def __init__(self, options: LoadOptions, figures: Figures, deadline: float) -> None:
        self.options = options
        self.figures = figures
        self.deadline = deadline
        step = 48 * CHUNK_MS
        audio = options.audio
        self._speech = [self._append(audio[i : i + step]) for i in range(0, len(audio), step)]
        self._silence = self._append(b"\0" * step)

    @staticmethod
    def _append(pcm: bytes) -> bytes:
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        return json.dumps(event).encode()

    async def run(self) -> None:
        options, figures = self.options, self.figures
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        started = time.monotonic()
        try:
            async with connect(
                f"{options.url}?model={options.model}",
                additional_headers=headers,
                max_size=None,
                compression=None,
                open_timeout=30,
            ) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))
                figures.connect_ms.append((time.monotonic() - started) * 1000)
                figures.events += 1
                if first.get("type") != "session.created":
                    raise ConnectionError(f"first event was {first.get('type')}")
                figures.active += 1
                try:
                    await self._turns(ws)
                finally:
                    figures.active -= 1
        except (ConnectionClosed, OSError, TimeoutError, ConnectionError):
            figures.dropped_sessions += 1
        else:
            figures.finished += 1

    async def _turns(self, ws: ClientConnection) -> None:
        """Turns until ``--turns`` are done or the deadline passes."""
        options = self.options
        done = 0
        while time.monotonic() < self.deadline and (
            options.duration_s is not None or done < options.turns
        ):
            self.figures.turns += 1
            ok = await (self._text_turn(ws) if options.text else self._audio_turn(ws))
            if not ok:
                self.figures.failed_turns += 1
            done += 1

    async def _recv(self, ws: ClientConnection, timeout_s: float) -> dict[str, Any]:
        # asyncio.timeout, not wait_for: no task per event (the generator shares the
        # machine it measures, so its own cost per frame counts).
        async with asyncio.timeout(timeout_s):
            frame = await ws.recv()
        self.figures.events += 1
        event = _delta_event(frame)
        if event is None:
            event = json.loads(frame)
            if event.get("type") == "error":
                self.figures.error_events += 1
        return event

    async def _text_turn(self, ws: ClientConnection) -> bool:
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hello, how are you today?"}],
                    },
                }
            )
        )
        sent = time.monotonic()
        await ws.send(json.dumps({"type": "response.create"}))
        return await self._await_response(ws, sent, sent)

    async def _audio_turn(self, ws: ClientConnection) -> bool:
        clock = time.monotonic()
        for message in self._speech:
            clock = await self._paced_send(ws, message, clock)
        speech_end = time.monotonic()
        feeder = asyncio.create_task(self._silence_until_cancelled(ws, clock))
        try:
            return await self._await_response(ws, speech_end, None)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _paced_send(self, ws: ClientConnection, message: bytes, clock: float) -> float:
        clock += CHUNK_MS / 1000
        delay = clock - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not send_text_now(ws, message):
            await ws.send(message, text=True)
        return clock

    async def _silence_until_cancelled(self, ws: ClientConnection, clock: float) -> None:
        while True:
            clock = await self._paced_send(ws, self._silence, clock)

    async def _await_response(self, ws: ClientConnection, start: float, sent: float | None) -> bool:
        figures = self.figures
        committed = created = first = None
        loop_deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while True:
            remaining = loop_deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = await self._recv(ws, remaining)
            kind = event.get("type")
            now = time.monotonic()
            if kind == "input_audio_buffer.committed":
                committed = now
            elif kind == "response.created":
                created = now
                if committed is not None:
                    figures.commit_to_created_ms.append((now - committed) * 1000)
            elif (
                kind
                in (
                    "response.output_audio.delta",
                    "response.output_text.delta",
                    "response.audio.delta",
                    "response.text.delta",
                )
                and first is None
            ):
                first = now
                if sent is not None:
                    figures.first_delta_ms.append((now - sent) * 1000)
                elif kind.endswith("audio.delta"):
                    figures.speech_end_to_first_audio_ms.append((now - start) * 1000)
            elif kind == "response.done":
                if created is not None:
                    figures.response_ms.append((now - created) * 1000)
                return bool(event.get("response", {}).get("status") == "completed")


async def run_load(options: LoadOptions, progress: Any = None) -> tuple[Figures, float]:
    """Run the load; ``progress(figures, elapsed_s)`` is called about once a second."""
    if not 1 <= options.sessions <= MAX_SESSIONS:
        raise ValueError(f"--sessions must be 1..{MAX_SESSIONS}")
    limit = min(options.duration_s or MAX_DURATION_S, MAX_DURATION_S)
    figures = Figures()
    started = time.monotonic()
    deadline = started + limit

    async def one(index: int) -> None:
        if options.ramp_s and options.sessions > 1:
            await asyncio.sleep(options.ramp_s * index / (options.sessions - 1))
        if options.transport == "webrtc":
            from loadgen.webrtc import WebRtcClient

            await WebRtcClient(options, figures, deadline).run()
        else:
            await SimulatedClient(options, figures, deadline).run()

    tasks = [asyncio.create_task(one(i)) for i in range(options.sessions)]
    reporter = asyncio.create_task(_report(progress, figures, started)) if progress else None
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), limit + RESPONSE_TIMEOUT_S + 60)
    except TimeoutError:
        for task in tasks:
            task.cancel()
    finally:
        if reporter is not None:
            reporter.cancel()
    return figures, time.monotonic() - started


async def _report(progress: Any, figures: Figures, started: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(figures, time.monotonic() - started)


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    data = np.asarray(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(data, 50)), 1),
        "p90": round(float(np.percentile(data, 90)), 1),
        "p99": round(float(np.percentile(data, 99)), 1),
        "max": round(float(data.max()), 1),
    }


def summarize(options: LoadOptions, figures: Figures, elapsed_s: float) -> dict[str, Any]:
    problems = figures.failed_turns + figures.error_events + figures.dropped_sessions
    attempts = max(1, figures.turns + figures.dropped_sessions)
    return {
        "url": options.url,
        "sessions": options.sessions,
        "mode": "text" if options.text else "audio",
        "elapsed_s": round(elapsed_s, 2),
        "turns": figures.turns,
        "failed_turns": figures.failed_turns,
        "error_events": figures.error_events,
        "dropped_sessions": figures.dropped_sessions,
        "finished_sessions": figures.finished,
        "events": figures.events,
        "events_per_second": round(figures.events / max(elapsed_s, 1e-6), 1),
        "error_rate": round(problems / attempts, 4),
        "latency_ms": {
            "speech_end_to_first_audio": _percentiles(figures.speech_end_to_first_audio_ms),
            "commit_to_response_created": _percentiles(figures.commit_to_created_ms),
            "request_to_first_delta": _percentiles(figures.first_delta_ms),
            "response_duration": _percentiles(figures.response_ms),
            "connect": _percentiles(figures.connect_ms),
        },
        "raw_ms": {
            "speech_end_to_first_audio": figures.speech_end_to_first_audio_ms,
            "commit_to_response_created": figures.commit_to_created_ms,
            "request_to_first_delta": figures.first_delta_ms,
            "response_duration": figures.response_ms,
            "connect": figures.connect_ms,
        },
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['sessions']} sessions ({summary['mode']}), {summary['elapsed_s']} s: "
        f"{summary['turns']} turns, {summary['failed_turns']} failed, "
        f"{summary['error_events']} error events, {summary['dropped_sessions']} dropped sessions, "
        f"{summary['events_per_second']} events/s, error rate {summary['error_rate']:.2%}",
        "",
        f"{'latency (ms)':34} {'n':>6} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}",
    ]
    for name, row in summary["latency_ms"].items():
        cells = [
            f"{row[k]:9.1f}" if row[k] is not None else f"{'-':>9}"
            for k in ("p50", "p90", "p99", "max")
        ]
        lines.append(f"{name.replace('_', ' '):34} {row['n']:6d} " + " ".join(cells))
    return "\n".join(lines)


def progress_line(figures: Figures, elapsed_s: float) -> str:
    rate = figures.events / max(elapsed_s, 1e-6)
    return (
        f"[{elapsed_s:6.1f}s] active {figures.active:4d}  done {figures.finished:4d}  "
        f"turns {figures.turns:5d}  failed {figures.failed_turns:3d}  "
        f"errors {figures.error_events:3d}  dropped {figures.dropped_sessions:3d}  "
        f"{rate:8.1f} events/s"
    )


_DELTAS = frozenset(
    {
        "response.output_audio.delta",
        "response.output_text.delta",
        "response.output_audio_transcript.delta",
        "response.audio.delta",
        "response.text.delta",
        "response.audio_transcript.delta",
    }
)
_TYPE_PREFIX = '{"type":"'


def _delta_event(frame: str | bytes) -> dict[str, Any] | None:
    """A delta's type without parsing its payload (only the type is read from it), for a
    server that writes ``type`` first and compact, as this one does; None: parse it."""
    if not isinstance(frame, str) or not frame.startswith(_TYPE_PREFIX):
        return None
    end = frame.find('"', len(_TYPE_PREFIX))
    kind = frame[len(_TYPE_PREFIX) : end]
    return {"type": kind} if kind in _DELTAS else None
