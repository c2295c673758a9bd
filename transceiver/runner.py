"""The session shell: read -> ``receive_*`` -> drain -> write, one handler per effect.

One writer task sends events in the order the core produced them; backends run as
tasks tagged with their response id, and barge-in cancels them (the core has
already closed the response, so any late output is dropped there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, assert_never

from models.audio import from_pcm16, to_pcm16
from models.silero import SileroFrames, SileroModel
from models.vad import (
    VAD_RATE_HZ,
    ServerVad,
    SilenceStarted,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from transceiver.backends.base import Backend, BackendError
from transceiver.backends.conversation import ResponseRefused
from transceiver.noise import InputNoise
from transceiver.observability import Metrics, log_event
from transceiver.outbox import CloseMarker, Outbox
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import SemanticVad
from transceiver.protocol.effects import (
    CancelResponse,
    Close,
    ContextItem,
    Effect,
    FeedVad,
    ResetVad,
    ResponseRequest,
    StartResponse,
    Transcribe,
)
from transceiver.protocol.session import RealtimeSession
from transceiver.protocol.wire import encode_server_event
from transceiver.speculation import Speculator
from transceiver.turns import LEAD_MS, TURN_WINDOW_MS, TurnJudge, TurnModel

log = logging.getLogger(__name__)

# The marks a turn sets, by the name of the stage they end (observability.TURN_STAGES).
STAGE_NAMES = {
    "stt_done": "stt",
    "first_token": "llm_first_token",
    "llm_first_token": "llm_first_token",
    "tts_first_audio": "tts_first_audio",
    "first_audio": "first_delta",
}


class _ResponseSink:
    def __init__(self, runner: SessionRunner, response_id: str, output_format: str) -> None:
        self._runner = runner
        self._id = response_id
        self.output_format = output_format
        self.marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        self.marks.setdefault(stage, self._runner.now_ms())

    async def _after(self, alive: bool) -> None:
        if not alive:
            raise asyncio.CancelledError  # the response ended under us (barge-in)
        self._runner.pump()
        await self._runner.backpressure()

    async def text(self, delta: str) -> None:
        await self._after(self._runner.session.response_text_delta(self._id, delta))

    async def transcript(self, delta: str) -> None:
        await self._after(self._runner.session.response_transcript_delta(self._id, delta))

    async def audio(
        self, pcm16: bytes, sample_rate_hz: int = AudioFormatType.PCM.sample_rate_hz
    ) -> None:
        self.mark("first_audio")
        wire = from_pcm16(pcm16, self.output_format, sample_rate_hz)
        now_ms = self._runner.now_ms()  # the playback clock of a media session
        await self._after(self._runner.session.response_audio_delta(self._id, wire, now_ms))

    async def function_call(self, name: str, arguments: str, call_id: str | None = None) -> None:
        alive = self._runner.session.response_function_call(self._id, name, arguments, call_id)
        await self._after(alive is not None)


class _TranscriptSink:
    """Sends an input transcript's pieces as deltas and keeps their log probabilities for
    the ``completed`` event."""

    def __init__(self, runner: SessionRunner, item_id: str | None) -> None:
        self._runner = runner
        self._item_id = item_id
        self.wants_logprobs = runner.session.wants_transcription_logprobs
        self.logprobs: list[dict[str, Any]] = []

    async def delta(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        self.logprobs.extend(logprobs or ())
        if self._item_id is not None:
            self._runner.session.transcription_delta(self._item_id, text, logprobs)
            self._runner.pump()


class SessionRunner:
    def __init__(
        self,
        session: RealtimeSession,
        backend: Backend,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
        turn_model: TurnModel | None = None,
    ) -> None:
        """``clock`` is a monotonic clock in seconds: session time starts at its first
        reading. ``turn_model`` judges semantic_vad's pauses (transceiver/turns.py);
        without it, semantic_vad turns end after the eagerness's max timeout."""
        self.session = session
        self.backend = backend
        self.state: dict[str, Any] = {}
        self._send = send
        self._close = close
        self._metrics = metrics
        self._clock = clock
        self._t0 = clock()
        self.outbox = outbox if outbox is not None else Outbox()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._transcripts: dict[str, asyncio.Future[str]] = {}
        self._vad: ServerVad | None = None
        self._vad_config: tuple[float, int, int] | None = None
        self._speech_end_ms: float | None = None
        self._unsure_wait_ms = 0  # semantic_vad: the wait when the two models disagree
        self._fed_end_ms = 0.0  # session audio time: the end of the audio the VAD got
        self._noise = InputNoise(session)  # audio.input.noise_reduction (transceiver/noise.py)
        self._speculator = Speculator(
            session, backend, self.state, self.now_ms, self.known_transcripts
        )
        self._judge = (
            TurnJudge(turn_model, self._turn_finished, session.id, self._turn_unsure)
            if turn_model is not None
            else None
        )
        self.closed = asyncio.Event()
        self._running = False  # between run()'s start and its end: take_now() may take

    def now_ms(self) -> float:
        return (self._clock() - self._t0) * 1000

    # -- the loop -------------------------------------------------------------------

    async def run(self, incoming: AsyncIterable[str | bytes]) -> None:
        writer = asyncio.create_task(self._writer())
        timer = asyncio.create_task(self._timer())
        self.pump()
        self._running = True
        try:
            async for frame in incoming:
                event = await self._noise.frame(frame)  # the append's audio filtered
                if event is not None:
                    self.session.receive_client_event(event, self.now_ms())
                self.pump()
                if self.closed.is_set():
                    break
                # A client that does not read its events is not read either: what it
                # can make the session hold stays bounded (transceiver/outbox.py).
                await self.backpressure()
                if self.closed.is_set():  # the connection ended while we waited
                    break
        finally:
            self._running = False
            self.session.close(self.now_ms())
            self._speculator.close()
            if self._judge is not None:
                self._judge.close()
            for task in [*self._tasks.values(), timer]:
                task.cancel()
            self.outbox.put(None)
            await asyncio.gather(writer, timer, *self._tasks.values(), return_exceptions=True)
            await self._noise.close()

    def take_now(self, frame: str | bytes) -> bool:
        """Handle a client frame as it arrives, without waking ``run``'s loop (a link
        session's consumer, transceiver/link.py): when it can be handled at once, with
        nothing before it still to handle, room in the outbox, no noise filter to run and
        the session going on. ``False``: it goes the usual way, through the loop."""
        if (
            not self._running
            or self.closed.is_set()
            or not self.outbox.has_room
            or not self._noise.unfiltered()
        ):
            return False
        try:
            self.session.receive_client_event(frame, self.now_ms())
            self.pump()
        except Exception:  # a bug: this session ends, the link and the others go on
            log.exception("session %s: failed on a client frame", self.session.id)
            self._running = False
            self.outbox.put(CloseMarker(1011, "internal error"))
        return True

    def pump(self) -> None:
        """Handle effects until none are left, then queue the events for the writer."""
        session = self.session
        while True:
            effects = session.effects()
            if not effects:
                break
            for effect in effects:
                self._handle(effect)
        for event in session.events_to_send():
            self.outbox.put(encode_server_event(event))

    async def backpressure(self) -> None:
        await self.outbox.room()

    async def _writer(self) -> None:
        """Send in order until the end, a close, or a failed send (the connection is gone);
        then nothing waits on the outbox any more."""
        try:
            while True:
                message = await self.outbox.get()
                if message is None:
                    return
                if isinstance(message, CloseMarker):
                    await self._close(message.code, message.reason)
                    return
                await self._send(message)
        finally:
            self.outbox.close()
            self.closed.set()

    async def _timer(self) -> None:
        while True:
            delay = (self.session.next_deadline_ms() - self.now_ms()) / 1000
            await asyncio.sleep(min(max(delay, 0.005), 1.0))
            self.session.tick(self.now_ms())
            self.pump()

    # -- effects --------------------------------------------------------------------

    def _handle(self, effect: Effect) -> None:
        match effect:
            case FeedVad():
                self._feed_vad(effect)
            case ResetVad():
                if self._vad is not None:
                    self._vad.reset()
                self._speculator.reset()
                if self._judge is not None:
                    self._judge.forget()
            case StartResponse(request=request):
                self._tasks[request.response_id] = asyncio.create_task(self._respond(request))
            case CancelResponse(response_id=response_id):
                task = self._tasks.pop(response_id, None)
                if task is not None:
                    task.cancel()
            case Transcribe(item_id=item_id):
                future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self._transcripts[item_id] = future
                self._tasks["trx_" + item_id] = asyncio.create_task(
                    self._transcribe(effect, future)
                )
            case Close(code=code, reason=reason):
                self.outbox.put(CloseMarker(code, reason))
            case _:
                assert_never(effect)

    def _feed_vad(self, effect: FeedVad) -> None:
        td = effect.turn_detection  # semantic_vad: silence_duration_ms is its max timeout
        vad_config = (td.threshold, td.prefix_padding_ms, td.silence_duration_ms)
        if self._vad is None or self._vad_config != vad_config:
            # The backend's Silero model (--vad silero) or webrtcvad (models/silero.py).
            model: SileroModel | None = getattr(self.backend, "vad_model", None)
            self._vad = ServerVad(
                threshold=td.threshold,
                prefix_padding_ms=td.prefix_padding_ms,
                silence_duration_ms=td.silence_duration_ms,
                classifier=SileroFrames(model, td.threshold) if model is not None else None,
            )
            self._vad_config = vad_config
        judged = self._judge is not None and isinstance(td, SemanticVad)
        self._speculator.remember(effect, TURN_WINDOW_MS if judged else 0.0)
        fmt = AudioFormatType.of(effect.audio_format)
        self._fed_end_ms = effect.start_ms + fmt.duration_ms(len(effect.audio))
        pcm = to_pcm16(effect.audio, effect.audio_format, VAD_RATE_HZ)
        for event in self._vad.feed(pcm, effect.start_ms):
            if isinstance(event, SpeechStarted):
                self._speculator.speech_started(event.audio_start_ms)
                self.session.vad_speech_started(event.audio_start_ms, self.now_ms())
            elif isinstance(event, SilenceStarted):
                self._speculator.silence_started(effect.audio_format, event.audio_ms)
                if isinstance(td, SemanticVad):
                    self._ask_end_of_turn(td, effect.audio_format, event.audio_ms)
            elif isinstance(event, SpeechResumed):
                self._speculator.drop()
                if self._judge is not None:
                    self._judge.forget()
            elif isinstance(event, SpeechStopped):
                self._end_turn(event.audio_end_ms)
        if self._judge is not None and self._judge.look_due(self._fed_end_ms):
            self._judge.look(
                self._speculator.turn_audio(effect.audio_format, LEAD_MS, TURN_WINDOW_MS)
            )

    def _ask_end_of_turn(self, td: SemanticVad, audio_format: str, pause_ms: float) -> None:
        """semantic_vad: has the user finished? Asked at each pause (transceiver/turns.py)."""
        if self._judge is None or self.session.speech_item_id is None:
            return
        self._unsure_wait_ms = td.silence_duration_ms // 2
        transcript = self._speculator.pause_transcript()
        audio = None
        if transcript is None and self._judge.transcribes:  # no speculative STT here
            audio = self._speculator.turn_audio(audio_format, LEAD_MS, TURN_WINDOW_MS)
        self._judge.pause(audio_format, pause_ms, td.eagerness, transcript, audio)

    def _turn_unsure(self) -> None:
        """The audio and the words disagree: half the max wait, this pause."""
        if self._vad is not None:
            self._vad.end_pause_after(self._unsure_wait_ms)

    def _turn_finished(self, pause_ms: float, min_silence_ms: int) -> None:
        """The end-of-turn model says the user finished: end the turn where speech paused,
        once the pause has lasted the eagerness's shortest (transceiver/turns.py)."""
        if self._vad is None or not self._vad.speaking or self.session.speech_item_id is None:
            return
        if not self._vad.end_pause(min_silence_ms):
            return  # the speech detector ends it then, unless speech resumes
        self._vad.reset()
        self._end_turn(pause_ms)
        self.pump()

    def _end_turn(self, audio_end_ms: float) -> None:
        if self._judge is not None:
            self._judge.forget()
        # Audio arrives in real time, so speech ended this long before now.
        now = self.now_ms()
        self._speech_end_ms = now - max(0.0, self._fed_end_ms - audio_end_ms)
        self._speculator.turn_ended()
        self.session.vad_speech_stopped(audio_end_ms, now)

    async def _stt(
        self, job: Transcribe, item_id: str | None
    ) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        """The transcript of ``job``, its usage and its tokens' log probabilities."""
        sink = _TranscriptSink(self, item_id)
        speculation = self._speculator.take_transcription(job.item_id)
        if speculation is None:
            text, usage = await self.backend.transcribe(job, sink, self.state)
            return text, usage, sink.logprobs
        text, usage, logprobs = await speculation
        if "seconds" in usage:  # bill the whole committed audio, not the speculated part
            seconds = AudioFormatType(job.audio_format).duration_ms(len(job.audio)) / 1000
            usage = {**usage, "seconds": round(seconds, 3)}
        if text:
            await sink.delta(text, logprobs)
        return text, usage, sink.logprobs

    async def _respond(self, request: ResponseRequest) -> None:
        rid = request.response_id
        sink = _ResponseSink(self, rid, request.output_format)
        speech_end, self._speech_end_ms = self._speech_end_ms, None
        if speech_end is None:  # response.create: measure from the request
            speech_end = self.now_ms()
        try:
            request = await self._with_transcripts(request)
            sink.mark("stt_done")
            preemption = self._speculator.take_reply(request)
            if preemption is not None:
                reason = await preemption.replay(sink)
            else:
                reason = await self.backend.respond(request, sink, self.state)
        except asyncio.CancelledError:
            raise
        except ResponseRefused as exc:  # a reason the client is told (context full...)
            self.session.response_failed(
                rid, exc.message, self.now_ms(), code=exc.code, error_type=exc.error_type
            )
        except Exception:
            log.exception("session %s: backend failed on %s", self.session.id, rid)
            self.session.response_failed(
                rid, "The backend failed to generate a response.", self.now_ms()
            )
        else:
            self.session.response_finished(rid, self.now_ms(), reason)
        finally:
            self._tasks.pop(rid, None)
            self.pump()
            self._log_turn(rid, speech_end, sink.marks)

    def _log_turn(self, rid: str, speech_end: float, marks: dict[str, float]) -> None:
        """One structured line per turn, and the per-stage latency histograms."""
        stages = {
            STAGE_NAMES[mark]: max(0.0, at - speech_end)
            for mark, at in marks.items()
            if mark in STAGE_NAMES
        }
        if self._metrics is not None:
            for stage, ms in stages.items():
                self._metrics.turn_latency.labels(stage).observe(ms / 1000)
        log_event(
            log,
            "turn",
            session_id=self.session.id,
            response_id=rid,
            **{f"{stage}_ms": round(ms) for stage, ms in stages.items()},
            **self._trace_fields(),
        )

    def _trace_fields(self) -> dict[str, Any]:
        """The session's ``tracing`` on its turn lines: no trace is exported from here, so
        the names a client gives its traces go where an operator looks (the logs)."""
        tracing = getattr(self.session.config, "tracing", None)
        if tracing is None:
            return {}
        if tracing == "auto":
            return {"trace": "auto"}
        return {"trace_workflow": tracing.workflow_name, "trace_group": tracing.group_id}

    async def _with_transcripts(self, request: ResponseRequest) -> ResponseRequest:
        """Give every user audio item in the context its transcript (waiting for STT)."""
        texts = {
            str(ctx.item.get("id")): await self._transcript_of(ctx)
            for ctx in request.context
            if _needs_transcript(ctx)
        }
        return _with_texts(request, texts)

    def known_transcripts(self, request: ResponseRequest) -> ResponseRequest | None:
        """``_with_transcripts`` without waiting: ``None`` if a transcript is not ready."""
        texts = {}
        for ctx in request.context:
            if _needs_transcript(ctx):
                future = self._transcripts.get(str(ctx.item.get("id")))
                if future is None or not future.done():
                    return None
                texts[str(ctx.item.get("id"))] = future.result()
        return _with_texts(request, texts)

    async def _transcript_of(self, ctx: ContextItem) -> str:
        item_id = str(ctx.item.get("id"))
        future = self._transcripts.get(item_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._transcripts[item_id] = future
            job = Transcribe(item_id, ctx.audio or b"", ctx.audio_format or "audio/pcm")
            try:
                text, _, _ = await self._stt(job, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session %s: transcription failed", self.session.id)
                text = ""
            if not future.done():
                future.set_result(text)
        return await asyncio.shield(future)

    async def _transcribe(self, job: Transcribe, future: asyncio.Future[str]) -> None:
        try:
            text, usage, logprobs = await self._stt(job, job.item_id)
        except asyncio.CancelledError:
            raise
        except BackendError as exc:  # the engine says why: the client hears it
            log.warning("session %s: transcription failed: %s", self.session.id, exc)
            self.session.transcription_failed(job.item_id, str(exc))
            text = ""
        except Exception:
            log.exception("session %s: transcription failed", self.session.id)
            self.session.transcription_failed(job.item_id, "The audio could not be transcribed.")
            text = ""
        else:
            self.session.transcription_completed(job.item_id, text, usage, logprobs=logprobs)
        finally:
            self._tasks.pop("trx_" + job.item_id, None)
            if not future.done():
                future.set_result(text)
            self.pump()


def _needs_transcript(ctx: ContextItem) -> bool:
    return ctx.audio is not None and any(
        p.get("type") == "input_audio" and p.get("transcript") is None
        for p in ctx.item.get("content", [])
    )


def _with_texts(request: ResponseRequest, texts: dict[str, str]) -> ResponseRequest:
    context = list(request.context)
    for index, ctx in enumerate(context):
        text = texts.get(str(ctx.item.get("id")))
        if text is not None and _needs_transcript(ctx):
            item = dict(ctx.item)
            item["content"] = [
                {**p, "transcript": text} if p.get("type") == "input_audio" else p
                for p in item.get("content", [])
            ]
            context[index] = dataclasses.replace(ctx, item=item)
    return dataclasses.replace(request, context=tuple(context))
