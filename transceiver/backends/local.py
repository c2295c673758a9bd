"""The ``local`` backend: faster-whisper -> LLM (llama.cpp or any chat-completions URL) -> piper.

Each model is loaded once per transceiver process and shared by its sessions;
blocking calls run on worker threads. The reply is spoken clause by clause as the
LLM streams, and transcript deltas follow the audio actually sent, word by word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from models.audio import to_pcm16
from models.errors import ModelError
from models.llm import LlamaCppLlm, Llm, LlmChunk, OpenAICompatLlm, TextDelta
from models.silero import SileroModel
from models.stt import TokenLogprob, Transcript, WhisperStt
from models.tts import PiperTts
from transceiver.backends.base import BackendError, ResponseSink, TranscriptSink
from transceiver.backends.conversation import chat_messages, fit_context, offered_tools
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.effects import ResponseRequest, Transcribe
from transceiver.settings import TransceiverSettings, parse_stt_model, parse_voice

log = logging.getLogger(__name__)

STT_RATE_HZ = 16_000
CHUNK_MS = 100
_END = object()
# A clause ends at . ! ? ; : (or a comma once the clause is long enough to speak).
_SENTENCE_END = re.compile(r"[.!?;:](?=\s)|\n")
_COMMA = re.compile(r",(?=\s)")
_WORDS = re.compile(r"\s*\S+")
_WORD_ENDS = re.compile(r"\S+(?=\s)")
FIRST_CLAUSE_WORDS = 2
# The room kept for a reply when the history is fitted into the context window, when
# neither max_output_tokens nor --llm-max-tokens sets a smaller one.
DEFAULT_REPLY_ROOM = 256


def split_clause(buffer: str, first: bool) -> tuple[str, str] | None:
    """Return ``(clause, rest)`` when ``buffer`` holds a complete clause to speak."""
    match = _SENTENCE_END.search(buffer)
    if match is not None and match.end() >= 2:
        return buffer[: match.end()], buffer[match.end() :]
    min_chars = 12 if first else 60  # the first clause is short: first audio sooner
    for comma in _COMMA.finditer(buffer):
        if comma.end() >= min_chars:
            return buffer[: comma.end()], buffer[comma.end() :]
    if first:
        # No punctuation yet: speak the first few words rather than wait for it.
        words = list(_WORD_ENDS.finditer(buffer))
        if len(words) > FIRST_CLAUSE_WORDS:
            cut = words[FIRST_CLAUSE_WORDS - 1].end()
            return buffer[:cut], buffer[cut:]
    return None


def load_stt_models(settings: TransceiverSettings) -> tuple[WhisperStt, dict[str, WhisperStt]]:
    """The default Whisper model and ``--stt-models NAME=MODEL,...``, each distinct model
    loaded once, at start, with the same device and options."""

    def load(model: str | None) -> WhisperStt:
        return WhisperStt(model, **settings.stt_options())

    default = load(settings.stt_model)
    loaded = {settings.stt_model or "": default}
    named: dict[str, WhisperStt] = {}
    for name, model in map(parse_stt_model, settings.stt_models):
        if model not in loaded:
            loaded[model] = load(model)
        named[name] = loaded[model]
    return default, named


def load_voices(entries: list[str]) -> dict[str, PiperTts]:
    """``--voices NAME=PATH[#SPEAKER],...``: each distinct voice loaded once, at start (a
    voice that cannot be loaded stops the transceiver, as the default one does)."""
    loaded: dict[tuple[str, int | None], PiperTts] = {}
    voices: dict[str, PiperTts] = {}
    for entry in map(parse_voice, entries):
        key = (entry.path, entry.speaker)
        if key not in loaded:
            loaded[key] = PiperTts(entry.path, speaker_id=entry.speaker)
        voices[entry.name] = loaded[key]
    return voices


class LocalBackend:
    name = "local"
    speculative_stt: bool
    preemptive: bool

    def __init__(
        self,
        stt: WhisperStt,
        llm: Llm,
        tts: PiperTts,
        *,
        workers: int = 4,
        language: str | None = "en",
        max_tokens: int | None = None,
        temperature: float = 0.7,
        lead_ms: int = 500,
        speculative_stt: bool = True,
        preemptive: bool = True,
        voices: dict[str, PiperTts] | None = None,
        stt_models: dict[str, WhisperStt] | None = None,
        vad_model: SileroModel | None = None,
    ) -> None:
        """``voices``: the piper voice of each session voice name (``--voices``); every
        other name speaks with ``tts``. ``stt_models``: the same for transcription model
        names (``--stt-models``) and ``stt``."""
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.voices = voices or {}
        self.stt_models = stt_models or {}
        self.vad_model = vad_model  # the runner's server VAD classifies frames with it
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._language = language
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._lead_ms = lead_ms
        self.speculative_stt = speculative_stt
        self.preemptive = preemptive

    @classmethod
    def from_settings(cls, settings: TransceiverSettings) -> LocalBackend:
        started = time.monotonic()
        stt, stt_models = load_stt_models(settings)
        llm: Llm
        if settings.llm_url:
            llm = OpenAICompatLlm(
                settings.llm_url,
                settings.llm_model,
                api_key=settings.llm_api_key,
                context_tokens=settings.llm_context_tokens,
            )
        else:
            llm = LlamaCppLlm(
                settings.llm_gguf, n_ctx=settings.llm_context_tokens, n_threads=settings.llm_threads
            )
        tts = PiperTts(settings.tts_voice, speaker_id=settings.tts_speaker)
        voices = load_voices(settings.voices)
        backend = cls(
            stt,
            llm,
            tts,
            workers=settings.workers,
            language=settings.stt_language,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            lead_ms=settings.tts_lead_ms,
            speculative_stt=settings.speculative_stt,
            preemptive=settings.preemptive_reply,
            voices=voices,
            stt_models=stt_models,
            vad_model=SileroModel(settings.vad_model) if settings.vad == "silero" else None,
        )
        backend.warm_up(embedded=not settings.llm_url)
        log.info("local backend ready in %.1f s", time.monotonic() - started)
        return backend

    def warm_up(self, embedded: bool) -> None:
        """Run each model once so the first user turn is not the slow one."""
        speech = self.tts.synthesize("Hello there.")
        self.stt.transcribe(speech, sample_rate_hz=self.tts.sample_rate_hz)
        if embedded:
            for _ in self.llm.stream([{"role": "user", "content": "Hi"}], max_tokens=1):
                pass

    def stt_for(self, model: str | None) -> WhisperStt:
        """The Whisper model for a session's transcription ``model`` name (``--stt-models``;
        any other name: the default one)."""
        return self.stt_models.get(model or "", self.stt)

    def voice_for(self, voice: str | dict[str, Any]) -> PiperTts:
        """The piper voice for a session's ``voice`` (a name, or a custom ``{"id"}``)."""
        name = voice.get("id") if isinstance(voice, dict) else voice
        return self.voices.get(str(name), self.tts)

    def model_ids(self) -> list[str]:
        return ["gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview", "local"]

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # -- speech to text -------------------------------------------------------------

    async def transcribe(
        self, job: Transcribe, sink: TranscriptSink, state: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Whisper on the committed audio; each segment is a delta as soon as it is decoded
        (one for a short turn), with its tokens' log probabilities when asked for."""
        pcm = to_pcm16(job.audio, job.audio_format, STT_RATE_HZ)
        seconds = AudioFormatType(job.audio_format).duration_ms(len(job.audio)) / 1000
        loop = asyncio.get_running_loop()
        segments: asyncio.Queue[tuple[str, tuple[TokenLogprob, ...]]] = asyncio.Queue()

        def on_segment(text: str, tokens: tuple[TokenLogprob, ...]) -> None:  # worker thread
            loop.call_soon_threadsafe(segments.put_nowait, (text, tokens))

        started = time.monotonic()
        work = asyncio.ensure_future(
            self._run(
                self.stt_for(job.config.model).transcribe,
                pcm,
                sample_rate_hz=STT_RATE_HZ,
                # Possible languages replace the server's default one.
                language=job.config.language or (None if job.config.languages else self._language),
                prompt=whisper_prompt(job.config.prompt, job.config.keywords),
                languages=job.config.languages or (),
                logprobs=sink.wants_logprobs,
                on_segment=on_segment,
            )
        )
        try:
            while not (work.done() and segments.empty()):
                waiter = asyncio.ensure_future(segments.get())
                await asyncio.wait({waiter, work}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    continue
                text, tokens = waiter.result()
                await sink.delta(text, [_logprob(t) for t in tokens] if tokens else None)
            result: Transcript = work.result()
        except ModelError as exc:
            raise BackendError(str(exc)) from exc
        finally:
            work.cancel()  # the thread runs on, but nothing waits for it
        log.debug("STT of %.2f s took %.0f ms", seconds, (time.monotonic() - started) * 1000)
        return result.text.strip(), {"type": "duration", "seconds": round(seconds, 3)}

    # -- responses ----------------------------------------------------------------------

    async def respond(
        self, request: ResponseRequest, sink: ResponseSink, state: dict[str, Any]
    ) -> str | None:
        """Returns ``max_output_tokens`` when the reply was cut by a token limit."""
        tools = offered_tools(request)
        messages, max_tokens = await self._run(self._prompt, request)
        speak = "audio" in request.output_modalities
        tts = self.voice_for(request.voice)
        speaker = _Speaker(self, sink, request.speed, tts) if speak else None
        buffer = ""
        first = True
        finish: list[str] = []
        generation = _Generation(
            tools,
            request.tool_choice if tools else "auto",
            max_tokens,
            self._temperature if request.temperature is None else request.temperature,
            finish.append,
            request.parallel_tool_calls,
        )
        # aclosing: on cancel (barge-in) the LLM thread must stop now, not at GC.
        async with contextlib.aclosing(self._stream(messages, generation)) as chunks:
            async for chunk in chunks:
                sink.mark("llm_first_token")
                if isinstance(chunk, TextDelta):
                    if speaker is None:
                        await sink.text(chunk.text)
                        continue
                    buffer += chunk.text
                    while (split := split_clause(buffer, first)) is not None:
                        clause, buffer = split
                        first = False
                        await speaker.say(clause)
                else:
                    if speaker is not None and buffer.strip():
                        await speaker.say(buffer)
                    buffer = ""
                    await sink.function_call(chunk.name, chunk.arguments, chunk.call_id)
                    if request.parallel_tool_calls is False:
                        break  # one call at most: the rest of the generation is dropped
        if speaker is not None and buffer.strip():
            await speaker.say(buffer)
        return "max_output_tokens" if finish[-1:] == ["length"] else None

    def _prompt(self, request: ResponseRequest) -> tuple[list[dict[str, Any]], int]:
        """The history fitted into the context window (by the session's ``truncation``),
        and the most tokens the reply may have: ``max_output_tokens``, ``--llm-max-tokens``
        and the room left in the window ("inf": up to the context window)."""
        context, count = self.llm.context_tokens, self.llm.count_tokens
        limits = [n for n in (request.max_output_tokens, self._max_tokens) if n]
        reserve = min([*limits, DEFAULT_REPLY_ROOM, context // 2])
        window = max(256, context - reserve - 32)
        images = isinstance(self.llm, OpenAICompatLlm)  # a URL engine may be a vision model
        messages = fit_context(chat_messages(request, images), request.truncation, window, count)
        room = max(1, context - count(messages) - 32)
        return messages, min([*limits, room])

    async def _stream(
        self, messages: list[dict[str, Any]], generation: _Generation
    ) -> AsyncGenerator[LlmChunk, None]:
        """The LLM's chunks, produced on a worker thread; stops it when we stop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def post(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                stop.set()

        def work() -> None:
            stream = self.llm.stream(
                messages,
                tools=generation.tools or None,
                max_tokens=generation.max_tokens,
                temperature=generation.temperature,
                tool_choice=generation.tool_choice,
                on_finish=generation.on_finish,
                parallel_tool_calls=generation.parallel_tool_calls,
            )
            try:
                for chunk in stream:
                    if stop.is_set():
                        break
                    post(chunk)
            except Exception as exc:
                post(exc)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                post(_END)

        loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise BackendError(f"the LLM failed: {item}") from item
                yield item  # type: ignore[misc]
        finally:
            stop.set()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for engine in (self.llm,):
            close = getattr(engine, "close", None)
            if close is not None:
                close()


@dataclass(frozen=True)
class _Generation:
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    max_tokens: int
    temperature: float
    on_finish: Callable[[str], None]
    parallel_tool_calls: bool | None = None  # False: the backend keeps the first call only


class _Speaker:
    """Speaks clauses: TTS on a worker, audio paced a little ahead of real time,
    each word's transcript delta sent just before the audio where it starts."""

    def __init__(
        self, backend: LocalBackend, sink: ResponseSink, speed: float, tts: PiperTts
    ) -> None:
        self._backend = backend
        self._tts = tts
        self._sink = sink
        self._speed = speed
        self._started: float | None = None
        self._sent_ms = 0.0

    async def say(self, clause: str) -> None:
        text = clause.strip()
        if not text:
            await self._sink.transcript(clause)
            return
        backend = self._backend
        try:
            pcm: bytes = await backend._run(self._tts.synthesize, text, speed=self._speed)
        except ModelError as exc:
            raise BackendError(str(exc)) from exc
        self._sink.mark("tts_first_audio")
        rate = self._tts.sample_rate_hz
        words = _WORDS.findall(clause) or [clause]
        trailing = clause[sum(len(w) for w in words) :]
        starts, total, acc = [], max(1, len(clause.strip())), 0
        for word in words:
            starts.append(int(len(pcm) * acc / total) & ~1)
            acc += len(word.strip()) + 1
        step = rate * 2 * CHUNK_MS // 1000
        next_word = 0
        for offset in range(0, max(len(pcm), 1), step):
            while next_word < len(words) and starts[next_word] < offset + step:
                await self._sink.transcript(words[next_word])
                next_word += 1
            await self._pace()
            chunk = pcm[offset : offset + step]
            await self._sink.audio(chunk, rate)
            self._sent_ms += len(chunk) / (rate * 2) * 1000
        for word in words[next_word:]:
            await self._sink.transcript(word)
        if trailing:
            await self._sink.transcript(trailing)

    async def _pace(self) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = now
            return
        ahead_ms = self._sent_ms - (now - self._started) * 1000 - self._backend._lead_ms
        if ahead_ms > 0:
            await asyncio.sleep(ahead_ms / 1000)


def whisper_prompt(prompt: str | None, keywords: list[str] | None) -> str | None:
    """The session's transcription ``prompt`` and ``keywords`` as one Whisper prompt (the
    text Whisper sees as coming before the audio: it favours those words and spellings)."""
    parts = [prompt.strip()] if prompt and prompt.strip() else []
    if keywords:
        parts.append(", ".join(k.strip() for k in keywords if k.strip()))
    return " ".join(p for p in parts if p) or None


def _logprob(token: TokenLogprob) -> dict[str, Any]:
    """OpenAI's shape of one token's log probability (token, logprob, UTF-8 bytes)."""
    return {
        "token": token.token,
        "logprob": round(token.logprob, 6),
        "bytes": list(token.token.encode("utf-8")),
    }
