"""Speculative STT and preemptive replies: work started while the silence window runs.

When the user pauses (VAD ``SilenceStarted``), the speech so far is transcribed at
once. If the pause becomes the end of the turn, that transcript is used instead of
transcribing again. Once it is ready, the reply itself can be generated ahead
(preemptive generation) into a buffer; when the real response starts with the same
request, the buffer is replayed and the reply goes on live. Speech that resumes
discards both.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transceiver.backends.base import Backend, ResponseSink
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import Transcription
from transceiver.protocol.effects import FeedVad, ResponseRequest, Transcribe
from transceiver.protocol.items import item_text
from transceiver.protocol.session import RealtimeSession

log = logging.getLogger(__name__)

RECENT_AUDIO_MS = 30_000  # input audio kept for speculative transcription
_END = ("end", ())


class RecentAudio:
    """The last ``keep_ms`` (at least) of input audio, in its wire format, kept as the
    appends' own chunks: adding one copies nothing (a bytearray grown at its end and trimmed
    at its front is copied whole, into fresh pages, again and again)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._dropped = 0  # bytes dropped from the front since ``_start_ms``
        self._start_ms = 0.0  # where the audio after a reset starts, session audio time

    def add(self, audio: bytes, start_ms: float, fmt: AudioFormatType, keep_ms: float) -> None:
        """Audio that starts at ``start_ms``, keeping the last ``keep_ms`` (0: nothing);
        a gap or an overlap starts over."""
        if abs(start_ms - self.start_ms(fmt) - fmt.duration_ms(self._size)) > 1:
            self._chunks.clear()
            self._size = self._dropped = 0
            self._start_ms = start_ms
        if keep_ms <= 0 and not self._chunks:  # keeping nothing (a mock session): counted
            self._dropped += len(audio)
            return
        self._chunks.append(audio)
        self._size += len(audio)
        keep = fmt.byte_count(keep_ms)
        while self._chunks and self._size - len(self._chunks[0]) >= keep:
            first = self._chunks.popleft()
            self._size -= len(first)
            self._dropped += len(first)

    def start_ms(self, fmt: AudioFormatType) -> float:
        """Session audio time of the first byte held."""
        return self._start_ms + fmt.duration_ms(self._dropped)

    def duration_ms(self, fmt: AudioFormatType) -> float:
        return fmt.duration_ms(self._size)

    def between(self, fmt: AudioFormatType, start_ms: float, end_ms: float | None = None) -> bytes:
        """The samples held from ``start_ms`` to ``end_ms`` (session audio time; None: to
        the latest)."""
        start = self._index(fmt, start_ms)
        end = self._size if end_ms is None else self._index(fmt, end_ms)
        return b"".join(self._chunks)[start:end]

    def _index(self, fmt: AudioFormatType, at_ms: float) -> int:
        """Where the sample at ``at_ms`` starts in what is held: at the earliest the first
        whole sample held (appends need not be whole samples), at the latest the end."""
        index = fmt.byte_count(max(0.0, at_ms - self._start_ms)) - self._dropped
        return min(max(index, -self._dropped % fmt.sample_bytes), self._size)


def request_signature(request: ResponseRequest) -> str:
    """What a reply depends on; two requests with the same signature get the same reply."""
    context = [
        [
            c.item.get("type"),
            c.item.get("role"),
            item_text(c.item),
            c.item.get("call_id"),
            c.item.get("name"),
            c.item.get("arguments"),
            c.item.get("output"),
        ]
        for c in request.context
    ]
    return json.dumps(
        [
            request.instructions,
            request.tools,
            request.tool_choice,
            request.output_modalities,
            request.output_format,
            request.voice,
            request.speed,
            request.max_output_tokens,
            request.truncation,
            request.temperature,
            request.parallel_tool_calls,
            context,
        ],
        sort_keys=True,
        default=str,
    )


# A speculative transcript: its text, usage and tokens' log probabilities.
Speculated = tuple[str, dict[str, Any], list[dict[str, Any]]]


class _HeldTranscript:
    """Keeps a speculative transcript's log probabilities; its text is sent only if the
    pause becomes the end of the turn (transceiver/runner.py)."""

    def __init__(self, wants_logprobs: bool) -> None:
        self.wants_logprobs = wants_logprobs
        self.logprobs: list[dict[str, Any]] = []

    async def delta(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        self.logprobs.extend(logprobs or ())


class BufferSink:
    """Records a preemptive reply's output for replay; it never waits."""

    def __init__(self, output_format: str, now_ms: Callable[[], float]) -> None:
        self.output_format = output_format
        self.ops: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self.marks: dict[str, float] = {}  # stage -> when, also queued for the replay
        self._now_ms = now_ms

    def mark(self, stage: str) -> None:
        if stage not in self.marks:
            self.marks[stage] = self._now_ms()
            self.ops.put_nowait(("mark", (stage, self.marks[stage])))

    async def text(self, delta: str) -> None:
        self.ops.put_nowait(("text", (delta,)))

    async def transcript(self, delta: str) -> None:
        self.ops.put_nowait(("transcript", (delta,)))

    async def audio(
        self, pcm16: bytes, sample_rate_hz: int = AudioFormatType.PCM.sample_rate_hz
    ) -> None:
        self.ops.put_nowait(("audio", (pcm16, sample_rate_hz)))

    async def function_call(self, name: str, arguments: str, call_id: str | None = None) -> None:
        self.ops.put_nowait(("function_call", (name, arguments, call_id)))


@dataclass
class Preemption:
    signature: str
    sink: BufferSink
    task: asyncio.Task[str | None]

    async def replay(self, sink: ResponseSink) -> str | None:
        """Send what was generated ahead, then the rest as it comes; the backend's result."""
        marks: dict[str, float] = getattr(sink, "marks", {})
        try:
            while True:
                name, args = await self.sink.ops.get()
                if name == "end":
                    return self.task.result()
                if name == "mark":
                    marks.setdefault(*args)
                else:
                    await getattr(sink, name)(*args)
        finally:
            self.task.cancel()  # a no-op once done; stops it on barge-in


@dataclass
class Speculator:
    session: RealtimeSession
    backend: Backend
    state: dict[str, Any]
    now_ms: Callable[[], float]
    # Fills in the transcripts of earlier user audio items (None: not all ready yet).
    fill: Callable[[ResponseRequest], ResponseRequest | None]
    _recent: RecentAudio = field(default_factory=RecentAudio)
    _speech_start_ms: float = 0.0
    _stt: asyncio.Task[Speculated] | None = None
    _stt_item: str | None = None
    _preemption: Preemption | None = None

    def remember(self, effect: FeedVad, judged_ms: float = 0.0) -> None:
        """Keep the input audio that may be asked for: the last ``RECENT_AUDIO_MS`` where
        the backend transcribes at pauses, else the last ``judged_ms`` (what an end-of-turn
        model sees: 0 without one). So a mock session with server VAD keeps none."""
        speculative = getattr(self.backend, "speculative_stt", False)
        keep_ms = RECENT_AUDIO_MS if speculative else judged_ms
        self._recent.add(
            effect.audio, effect.start_ms, AudioFormatType.of(effect.audio_format), keep_ms
        )

    def speech_started(self, audio_start_ms: float) -> None:
        self._speech_start_ms = audio_start_ms

    def turn_audio(self, audio_format: str, lead_ms: float, max_ms: float) -> bytes:
        """The current turn's input audio up to the latest (wire format): from ``lead_ms``
        before its speech started, at most the last ``max_ms``."""
        fmt = AudioFormatType.of(audio_format)
        latest_ms = self._recent.start_ms(fmt) + self._recent.duration_ms(fmt)
        return self._recent.between(fmt, max(self._speech_start_ms - lead_ms, latest_ms - max_ms))

    def silence_started(self, audio_format: str, until_ms: float) -> None:
        if not getattr(self.backend, "speculative_stt", False):
            return
        self.drop()
        fmt = AudioFormatType.of(audio_format)
        audio = self._recent.between(fmt, self._speech_start_ms, until_ms)
        transcription = self.session.config.audio.input.transcription
        config = transcription if transcription is not None else Transcription()
        job = Transcribe("speculation", audio, fmt, config)
        log.debug("session %s: speculative STT at %.0f ms", self.session.id, until_ms)
        task = asyncio.create_task(self._transcribe(job))
        task.add_done_callback(self._transcribed)
        self._stt = task

    async def _transcribe(self, job: Transcribe) -> Speculated:
        sink = _HeldTranscript(self.session.wants_transcription_logprobs)
        text, usage = await self.backend.transcribe(job, sink, self.state)
        return text, usage, sink.logprobs

    def _transcribed(self, task: asyncio.Task[Speculated]) -> None:
        """Speculative STT finished: generate the reply ahead if the turn is still pending."""
        if task is not self._stt or self._stt_item is not None or task.cancelled():
            return
        if task.exception() is not None or not getattr(self.backend, "preemptive", False):
            return
        text = task.result()[0]
        preview = self.session.preview_response(text) if text else None
        request = self.fill(preview) if preview is not None else None
        if request is None:
            return
        sink = BufferSink(request.output_format, self.now_ms)
        reply = asyncio.create_task(self.backend.respond(request, sink, self.state))
        reply.add_done_callback(lambda _: sink.ops.put_nowait(_END))
        self._preemption = Preemption(request_signature(request), sink, reply)

    def pause_transcript(self) -> asyncio.Task[Speculated] | None:
        """The transcription of the speech before the current pause, while it is not yet
        the turn's (semantic_vad checks the words: transceiver/turns.py)."""
        return self._stt if self._stt_item is None else None

    def turn_ended(self) -> None:
        """The pause became the end of the turn: the speculation belongs to its item."""
        if self._stt is not None:
            self._stt_item = self.session.speech_item_id

    def reset(self) -> None:
        if self._stt_item is None:
            self.drop()

    def drop(self) -> None:
        if self._stt is not None:
            log.debug("session %s: speculation dropped", self.session.id)
            self._stt.cancel()
        self._stt = None
        self._stt_item = None
        self._drop_preemption()

    def _drop_preemption(self) -> None:
        if self._preemption is not None:
            self._preemption.task.cancel()
        self._preemption = None

    def take_transcription(self, item_id: str) -> asyncio.Task[Speculated] | None:
        """The speculative transcription of ``item_id``'s speech, if there is one."""
        task = self._stt if self._stt_item == item_id else None
        if task is not None:
            self._stt = None
            self._stt_item = None
        return task

    def take_reply(self, request: ResponseRequest) -> Preemption | None:
        """The reply generated ahead for exactly this request, if there is one."""
        preemption, self._preemption = self._preemption, None
        if preemption is None:
            return None
        if preemption.signature != request_signature(request) or preemption.task.cancelled():
            log.debug("session %s: preemptive reply discarded", self.session.id)
            preemption.task.cancel()
            return None
        log.debug("session %s: preemptive reply used", self.session.id)
        return preemption

    def close(self) -> None:
        """Stop what runs and let go of the runner (its bound methods would keep it and its
        session alive until a GC cycle)."""
        self.drop()
        self.now_ms = _never_now
        self.fill = _never_fill


def _never_now() -> float:
    return 0.0


def _never_fill(request: ResponseRequest) -> ResponseRequest | None:
    return None
