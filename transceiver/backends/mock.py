"""The deterministic mock backend: a product feature for testing and load testing clients.

Replies follow a script (turns matched on the user's text) or, without one, echo
text input and describe audio input. Output audio is speech-like (a pitched,
syllable-modulated tone per word), as long as the text takes to say, streamed
with its transcript.

Script format (YAML or JSON)::

    turns:
      - match: "weather"            # regular expression, case-insensitive
        reply: "Let me check."      # optional text before a call
        function_call: {name: get_weather, arguments: {city: Paris}}
      - match: "."
        reply: "I am a mock."
    after_function_call: "The tool said: {output}"
    transcripts: ["what is the weather in Paris"]   # given, in order, for audio turns
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from models.synth import word_audio
from transceiver.backends.base import ResponseSink, TranscriptSink
from transceiver.backends.conversation import offered_tools
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.effects import ContextItem, ResponseRequest, Transcribe
from transceiver.protocol.items import item_text

if TYPE_CHECKING:
    from models.silero import SileroModel

PCM = AudioFormatType.PCM  # the audio the mock speaks: PCM16 at the wire rate
CHUNK_MS = 100  # output audio delta size


@dataclass(frozen=True)
class ScriptTurn:
    pattern: re.Pattern[str]
    reply: str | None
    function_call: dict[str, Any] | None


@dataclass
class MockScript:
    turns: list[ScriptTurn] = field(default_factory=list)
    after_function_call: str = "The function returned: {output}"
    transcripts: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> MockScript:
        text = Path(path).read_text(encoding="utf-8")
        if path.endswith((".yaml", ".yml")):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a mock script is a mapping with 'turns'")
        turns = [
            ScriptTurn(
                re.compile(str(turn.get("match", ".")), re.IGNORECASE),
                turn.get("reply"),
                turn.get("function_call"),
            )
            for turn in data.get("turns", [])
        ]
        return cls(
            turns=turns,
            after_function_call=data.get("after_function_call", cls.after_function_call),
            transcripts=[str(t) for t in data.get("transcripts", [])],
        )


@dataclass
class MockOptions:
    script: MockScript | None = None
    first_delta_ms: int = 150
    words_per_minute: int = 170
    realtime: bool = True


class MockBackend:
    name = "mock"

    def __init__(self, options: MockOptions, vad_model: SileroModel | None = None) -> None:
        self.options = options
        # --vad silero: the runner's server VAD classifies frames with it (models/silero.py),
        # for clients that stream real speech from noisy rooms.
        self.vad_model = vad_model

    def model_ids(self) -> list[str]:
        return ["gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview", "mock"]

    def _audio_seconds(self, item: ContextItem) -> float:
        if item.audio is None or item.audio_format is None:
            return 0.0
        return AudioFormatType(item.audio_format).duration_ms(len(item.audio)) / 1000

    def _reply(self, request: ResponseRequest) -> tuple[str, dict[str, Any] | None]:
        last = request.context[-1] if request.context else None
        if last is None:
            return "Hello! How can I help you?", None
        if last.item.get("type") == "function_call_output":
            template = (
                self.options.script.after_function_call
                if self.options.script
                else (MockScript.after_function_call)
            )
            return template.format(output=last.item.get("output", "")), None
        user = next((c for c in reversed(request.context) if c.item.get("role") == "user"), None)
        text = item_text(user.item) if user else ""
        script = self.options.script
        if script is not None:
            for turn in script.turns:
                if turn.pattern.search(text):
                    return turn.reply or "", turn.function_call
        if user is not None and user.audio is not None:
            return f"I heard {self._audio_seconds(user):.1f} seconds of audio.", None
        return text or "Hello! How can I help you?", None

    async def respond(
        self, request: ResponseRequest, sink: ResponseSink, state: dict[str, Any]
    ) -> str | None:
        reply, call = _with_tool_choice(request, *self._reply(request))
        if self.options.first_delta_ms:
            await asyncio.sleep(self.options.first_delta_ms / 1000)
        sink.mark("first_token")
        limit = request.max_output_tokens
        words = reply.split()
        truncated = limit is not None and len(words) > limit
        if limit is not None and truncated:
            words = words[:limit]
            call = None
        if "audio" in request.output_modalities:
            await self._speak(words, request.speed, sink)
        else:
            for index, word in enumerate(words):
                await sink.text(word if index == 0 else " " + word)
        if call is not None:
            args = call.get("arguments", {})
            arguments = args if isinstance(args, str) else json.dumps(args)
            await sink.function_call(str(call["name"]), arguments)
        return "max_output_tokens" if truncated else None

    async def _speak(self, words: list[str], speed: float, sink: ResponseSink) -> None:
        word_ms = int(60_000 / self.options.words_per_minute / max(speed, 0.25))
        started = time.monotonic()
        sent_ms = 0.0
        pending = b""
        for index, word in enumerate(words):
            await sink.transcript(word if index == 0 else " " + word)
            pending += word_audio(word, word_ms, PCM.sample_rate_hz)
            chunk_bytes = PCM.byte_count(CHUNK_MS)
            while len(pending) >= chunk_bytes:
                chunk, pending = pending[:chunk_bytes], pending[chunk_bytes:]
                sent_ms = await self._send(sink, chunk, started, sent_ms)
        if pending:
            await self._send(sink, pending, started, sent_ms)

    async def _send(
        self, sink: ResponseSink, chunk: bytes, started: float, sent_ms: float
    ) -> float:
        if self.options.realtime:
            # Stay no more than one chunk ahead of real time.
            ahead = (sent_ms - CHUNK_MS) / 1000 - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await sink.audio(chunk, PCM.sample_rate_hz)
        return sent_ms + PCM.duration_ms(len(chunk))

    async def transcribe(
        self, job: Transcribe, sink: TranscriptSink, state: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        seconds = AudioFormatType(job.audio_format).duration_ms(len(job.audio)) / 1000
        script = self.options.script
        index = state.get("mock_transcripts", 0)
        if script is not None and index < len(script.transcripts):
            text = script.transcripts[index]
            state["mock_transcripts"] = index + 1
        else:
            text = f"{seconds:.1f} seconds of audio"
        for index, word in enumerate(text.split()):
            piece = word if index == 0 else " " + word
            # The mock is certain of its scripted words: log probability 0 each.
            logprobs = [{"token": piece, "logprob": 0.0, "bytes": list(piece.encode())}]
            await sink.delta(piece, logprobs if sink.wants_logprobs else None)
        return text, {"type": "duration", "seconds": round(seconds, 3)}

    async def aclose(self) -> None:
        return None


def _with_tool_choice(
    request: ResponseRequest, reply: str, call: dict[str, Any] | None
) -> tuple[str, dict[str, Any] | None]:
    """The scripted reply under the response's ``tool_choice``: ``none`` makes no call;
    ``auto`` makes the scripted call only if the response offers that function (as a model
    would: else the reply alone); a forced call the script does not make is made instead of
    the reply, with the script's arguments if it calls that function, else ``{}`` (the mock
    has no model to fill them)."""
    tools = offered_tools(request)  # refuses what no backend here can honour (mcp)
    choice = request.tool_choice
    if choice == "none":
        return reply, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        names = [str(choice.get("name"))]
    elif choice == "required":
        names = [str(t.get("name")) for t in tools]
    else:
        offered = call is not None and any(t.get("name") == call.get("name") for t in tools)
        return reply, call if offered else None
    if call is not None and call.get("name") in names:
        return reply, call
    return "", {"name": names[0], "arguments": {}}
