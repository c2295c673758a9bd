"""``python -m bench.turn_cost [SESSIONS]``: the transceiver's CPU per mock turn, in process.

Each session (a core and its shell, no sockets) gets ``TURNS`` turns of the load generator's
spoken utterance plus 800 ms of silence, as 20 ms appends with server VAD; the mock answers
each turn with audio, not in real time. The same number of appends of silence alone (no
speech, so no turn) gives what the appends cost by themselves; the difference is the turn's
own work (the commit, the reply's events, the conversation keeping both audios, the log
line). Prints; writes nothing (``bench frames`` is the in-situ figure, this one is steadier
for a change to the per-turn path).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
from collections.abc import AsyncIterator

from loadgen.client import default_speech
from transceiver.backends.mock import MockBackend, MockOptions
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner

TURNS = 9  # about what a session of bench frames' 20 s run takes
SESSIONS = 30
FRAME_BYTES = 960  # 20 ms at 24 kHz


class _Client:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.responses = 0
        self.answered = asyncio.Event()

    async def send(self, message: str) -> None:
        if message.startswith('{"type":"response.done"'):
            self.responses += 1
            self.answered.set()

    async def close(self, code: int, reason: str) -> None:
        return None

    async def frames(self) -> AsyncIterator[str]:
        while (frame := await self.incoming.get()) is not None:
            yield frame


def _appends(pcm: bytes) -> list[str]:
    return [
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
        for chunk in (pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES))
        if len(chunk) == FRAME_BYTES
    ]


async def _session(frames: list[str], backend: MockBackend, answered: bool) -> None:
    session = RealtimeSession(SessionSpec(kind=SessionKind.REALTIME, model="gpt-realtime"))
    client = _Client()
    runner = SessionRunner(session, backend, client.send, client.close)
    task = asyncio.create_task(runner.run(client.frames()))
    await asyncio.sleep(0)
    for turn in range(TURNS):
        for n, frame in enumerate(frames):
            if not runner.take_now(frame):
                client.incoming.put_nowait(frame)
            if n % 25 == 0:
                await asyncio.sleep(0)
        while answered and client.responses < turn + 1:
            client.answered.clear()
            await client.answered.wait()
    client.incoming.put_nowait(None)
    await task


async def _cpu_ms(frames: list[str], sessions: int, answered: bool) -> float:
    backend = MockBackend(MockOptions(realtime=False, first_delta_ms=0))
    started = time.process_time()
    for _ in range(sessions):
        await _session(frames, backend, answered)
    return (time.process_time() - started) * 1000


def main(sessions: int = SESSIONS) -> None:
    logging.basicConfig(level=logging.INFO, handlers=[logging.NullHandler()])
    speech = _appends(default_speech() + bytes(FRAME_BYTES * 40))
    silence = _appends(bytes(len(speech) * FRAME_BYTES))
    turns = sessions * TURNS
    with_turns = asyncio.run(_cpu_ms(speech, sessions, answered=True))
    appends_only = asyncio.run(_cpu_ms(silence, sessions, answered=False))
    print(
        f"turn_cost: {turns} turns of {len(speech)} appends: {with_turns / turns:.2f} ms of CPU "
        f"a turn with its appends; {appends_only / turns:.2f} ms for as many appends of "
        f"silence (no turn); the turn's own work about {(with_turns - appends_only) / turns:.2f} "
        "ms"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
