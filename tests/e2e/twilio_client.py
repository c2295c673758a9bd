"""Twilio's side of a bidirectional Media Stream, for the tests: the messages Twilio sends,
field for field as its documentation shows them
(https://www.twilio.com/docs/voice/media-streams/websocket-messages), and a phone that
plays what it receives in real time.

Every 20 ms the phone sends 160 bytes of caller audio (8 kHz mu-law, silence unless told
to say something) as a ``media`` message and plays 160 bytes of the assistant's audio. A
``mark`` it receives is echoed once the audio sent before it has played; on ``clear`` it
drops the audio it holds and echoes every mark still waiting, as Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection

from models.audio import ulaw_encode
from models.synth import speech

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_S = 0.02
SILENCE = b"\xff" * FRAME_BYTES  # mu-law's zero
ACCOUNT_SID = "AC" + "0" * 32
CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "2" * 32


def sign(token: str, url: str, params: dict[str, str] | None = None) -> str:
    """``X-Twilio-Signature``, written from Twilio's security guide: the URL, then each POST
    parameter's name and value sorted by name, HMAC-SHA1 with the auth token, base64."""
    data = url + "".join(name + (params or {})[name] for name in sorted(params or {}))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def mulaw_speech(words: str) -> bytes:
    """``words`` spoken by the test voice, as 8 kHz mu-law."""
    return ulaw_encode(speech(words, rate_hz=8000))


class TwilioPhone:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.played = bytearray()  # the assistant audio played, in order
        self.echoed: list[str] = []  # the marks echoed
        self.played_at_clear: list[int] = []  # len(played) when each clear arrived
        self._say = bytearray()
        self._queue: deque[tuple[str, bytes | str]] = deque()  # ("audio", b) / ("mark", n)
        self._sequence = 0
        self._chunk = 0
        self._tasks: list[asyncio.Task[None]] = []

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def start(self, parameters: dict[str, str]) -> None:
        """``connected`` and ``start``, then the phone runs (audio both ways)."""
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": STREAM_SID,
                    "callSid": CALL_SID,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": parameters,
                },
                "streamSid": STREAM_SID,
            }
        )
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._clock()),
        ]

    def say(self, mulaw: bytes) -> None:
        self._say += mulaw

    @property
    def saying(self) -> bool:
        return bool(self._say)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == event]

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {
                "event": "dtmf",
                "streamSid": STREAM_SID,
                "sequenceNumber": self._next_sequence(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        await self.send(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
                "streamSid": STREAM_SID,
            }
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()

    async def _read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            self.received.append(message)
            event = message.get("event")
            if event == "media":
                self._queue.append(("audio", base64.b64decode(message["media"]["payload"])))
            elif event == "mark":
                self._queue.append(("mark", message["mark"]["name"]))
            elif event == "clear":
                self.played_at_clear.append(len(self.played))
                marks = [value for kind, value in self._queue if kind == "mark"]
                self._queue.clear()
                for name in marks:
                    await self._echo(str(name))

    async def _echo(self, name: str) -> None:
        self.echoed.append(name)
        await self.send(
            {
                "event": "mark",
                "sequenceNumber": self._next_sequence(),
                "streamSid": STREAM_SID,
                "mark": {"name": name},
            }
        )

    async def _clock(self) -> None:
        """Real time: a frame of caller audio out and one of assistant audio played per
        20 ms, on the event loop's clock."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            self._chunk += 1
            frame = bytes(self._say[:FRAME_BYTES])
            del self._say[:FRAME_BYTES]
            frame += SILENCE[len(frame) :]
            await self.send(
                {
                    "event": "media",
                    "sequenceNumber": self._next_sequence(),
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(self._chunk * 20),
                        "payload": base64.b64encode(frame).decode(),
                    },
                    "streamSid": STREAM_SID,
                }
            )
            await self._play(FRAME_BYTES)
            await asyncio.sleep(max(0.0, start + self._chunk * FRAME_S - loop.time()))

    async def _play(self, size: int) -> None:
        """Play ``size`` bytes of queued audio, echoing each mark the playback reaches."""
        while self._queue:
            kind, value = self._queue[0]
            if kind == "mark":
                self._queue.popleft()
                await self._echo(str(value))
                continue
            if size == 0:
                return
            assert isinstance(value, bytes)
            taken = value[:size]
            self.played += taken
            size -= len(taken)
            if len(taken) == len(value):
                self._queue.popleft()
            else:
                self._queue[0] = ("audio", value[len(taken) :])
