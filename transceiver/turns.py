"""semantic_vad's end of turn: at each pause, an end-of-turn model judges whether the user
has finished (https://platform.openai.com/docs/guides/realtime-vad, "Semantic VAD").

The session shell (transceiver/runner.py) runs the speech detector. When speech pauses
(``SilenceStarted``, 100 ms of silence: models/vad.py) it tells this module, which asks
the model about the turn so far, off the event loop. A "finished" answer ends the turn
where the speech paused, as soon as the pause has lasted the eagerness's shortest
(``MIN_SILENCE_MS``, ``--turn-min-silence-ms``: at once if it has, else when it has,
unless speech resumes first); "not finished" keeps listening. Where the words allow an
end (below), the model takes a second look at the same pause once it has lasted 200 ms
(``LOOKS_MS``); then the turn ends at the next pause the model calls finished, or after
the eagerness's max timeout of silence (transceiver/protocol/config.py
``SEMANTIC_VAD_MAX_WAIT_MS``). Speech that resumes voids a pending answer.

Why two looks (`python -m bench turn-model`, its table by the silence after the words,
and `python -m bench turns`):
with 100 ms of silence after the words the model calls a quarter of this project's
complete spoken questions unfinished, and their turns would wait for the max timeout (4 s
at ``auto``); with 200 ms it calls them finished, while calling one or two more of the 32
mid-sentence pauses finished. It is not asked again as the silence grows: past
about 300 ms it drifts to "complete" (and it says "complete" on silence and noise alone,
so it is only ever asked after the speech detector heard speech).

Eagerness also moves the decision threshold (the transceiver's ``--turn-threshold``,
default 0.5): ``high`` ends a turn more readily (threshold - 0.2), ``low`` only when the
model is surer (+ 0.2); ``medium`` and ``auto`` use it as it is.

Where the backend transcribes at the pause (the local backend's speculative STT), or where
the transceiver does it here for a backend that does not (the mock, the proxy; not with
``--no-turn-transcribe``), the words are judged too (models/turn_text.py): does the
transcript so far end a message (log-probability above ``--turn-text-threshold``)? The
turn ends at the pause only if both say so ("I want to go to" keeps listening however
final it sounded); when they disagree, the pause ends the turn after half the eagerness's
max timeout; when both say "not finished", after all of it. The transcript is awaited for at most
``TRANSCRIPT_WAIT_S``; without one, the audio decides alone: also while the words' models
are being built (the mock's and the proxy's at their first semantic_vad pause), and where
``STT_QUEUE_MAX`` transcriptions already wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from models.audio import to_pcm16
from models.errors import ModelError, SttError
from models.stt import Transcript
from models.turn import EndOfTurn, SmartTurn, TurnError
from models.turn_text import TextTurn
from transceiver.speculation import Speculated

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_RATE_HZ = 16_000
# The model sees the last 8 s (models/turn.py); the turn is taken from a little before
# the speech detector's start (which already includes the prefix padding).
TURN_WINDOW_MS = 8_000
LEAD_MS = 200
# The model looks at a pause once it has lasted 100 ms (when the speech detector calls it
# a pause: models/vad.py) and, if it said "not finished" where the words allow an end,
# once more at 200 ms.
LOOKS_MS = (100, 200)
EAGERNESS_SHIFT = {"low": 0.2, "medium": 0.0, "auto": 0.0, "high": -0.2}
# The shortest pause a "finished" ends the turn at (``--turn-min-silence-ms``), at medium
# and auto; low waits twice as long, high not at all. A speaker's comma is a pause too
# (210-320 ms in piper's speech: ``python -m bench turn-model``, its table by the silence
# after the words) that both models may call an end ("I need apples,"): 270 ms lets most
# of them pass and leaves a complete turn's end within 300 ms of its last word
# (README.md, "End-of-turn model").
MIN_SILENCE_MS = 270
EAGERNESS_SILENCE = {"low": 2.0, "medium": 1.0, "auto": 1.0, "high": 0.0}
# Model calls run on this many threads per transceiver; more pauses at once wait their turn.
TURN_WORKERS = 2
TRANSCRIPT_WAIT_S = 2.0
# Transcriptions waiting for the transceiver's one pause-STT thread (about 60 ms each) past
# which a pause is judged by the audio alone: many sessions pausing at once (a load test of
# semantic_vad against the mock) get the audio model's latency, not a growing queue's.
STT_QUEUE_MAX = 8
# ln P(end of message | words) above which the words allow the turn to end (models/turn_text.py)
TEXT_THRESHOLD = -14.0
# Whisper's mean token log-probability below which a pause's own transcript is a guess, not
# words heard: on sounds that are not speech (noise, a load test's synthetic voice) it says
# "You" and the like, which would read as an unfinished message and hold every such turn
# open. Such a transcript counts as unknown: the audio decides. ``python -m bench
# turn-model``, its table of the pause STT's confidence: piper's speech scores above,
# the noise-only clips and synthetic speech below.
GUESS_LOGPROB = -1.5


class TextScorer(Protocol):
    """Scores the words: ln P(the user's message ends after ``text``)."""

    def log_probability(self, text: str) -> float: ...


class PauseTranscriber(Protocol):
    """Transcribes the speech so far at a pause (models/stt.py ``WhisperStt``)."""

    def transcribe(self, pcm16: bytes, *, sample_rate_hz: int, logprobs: bool) -> Transcript: ...


def confidence(transcript: Transcript) -> float | None:
    """The mean log-probability of a transcript's tokens; None without them."""
    if not transcript.logprobs:
        return None
    return sum(t.logprob for t in transcript.logprobs) / len(transcript.logprobs)


def decision_threshold(base: float, eagerness: str) -> float:
    """The probability above which a pause ends the turn, at this eagerness."""
    return min(0.95, max(0.05, base + EAGERNESS_SHIFT.get(eagerness, 0.0)))


def min_silence(base_ms: int, eagerness: str) -> int:
    """The shortest pause that ends the turn at this eagerness, in ms."""
    return round(base_ms * EAGERNESS_SILENCE.get(eagerness, 1.0))


def _probability(model: EndOfTurn, audio: bytes, audio_format: str) -> float:
    return model.probability(to_pcm16(audio, audio_format, MODEL_RATE_HZ), MODEL_RATE_HZ)


@dataclass
class TurnModel:
    """The end-of-turn model one transceiver shares between all its sessions, with the
    threads its (blocking, 28-75 ms of CPU) calls run on."""

    model: EndOfTurn
    threshold: float = 0.5
    min_silence_ms: int = MIN_SILENCE_MS
    workers: int = TURN_WORKERS
    # The words' model (models/turn_text.py), or how to build it (by ``prepare`` at the
    # start of a transceiver whose pauses will ask, else on first use): a mock
    # transceiver that never sees a semantic_vad pause never loads it.
    text: TextScorer | None = None
    text_loader: Callable[[], TextScorer] | None = None
    text_threshold: float = TEXT_THRESHOLD
    # Where the backend has no transcript at a pause (mock, proxy): the speech so far is
    # transcribed here for the words (built by ``prepare``).
    stt: PauseTranscriber | None = None
    stt_loader: Callable[[], PauseTranscriber] | None = None
    # The default where the backend has no transcript (no --turn-transcribe given): the
    # words' models are built in the background at the first pause that would use them, and
    # until they are, the audio decides.
    build_on_first_use: bool = False
    _building: bool = field(default=False, init=False, repr=False)
    _transcribing: int = field(default=0, init=False, repr=False)  # queued or running
    _executor: ThreadPoolExecutor = field(init=False, repr=False)
    _stt_executor: ThreadPoolExecutor = field(init=False, repr=False)
    _text_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stt_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="end-of-turn")
        # Its own thread: a transcription (about 60 ms) does not hold up the model's calls.
        self._stt_executor = ThreadPoolExecutor(1, thread_name_prefix="end-of-turn-stt")

    async def probability(self, audio: bytes, audio_format: str) -> float:
        """P(the turn in ``audio``, wire format, is complete), computed off the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _probability, self.model, audio, audio_format
        )

    async def text_log_probability(self, text: str) -> float | None:
        """ln P(the message ends after ``text``), off the loop; None without a text model."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._score_text, text)

    def _score_text(self, text: str) -> float | None:
        scorer = self._text_scorer()
        return scorer.log_probability(text) if scorer is not None else None

    def _text_scorer(self) -> TextScorer | None:
        with self._text_lock:
            loader, self.text_loader = self.text_loader, None  # tried once, whatever happens
            self.text = _built(
                self.text,
                loader,
                "the words are checked too (models/turn_text.py)",
                "no text end-of-turn model",
            )
            return self.text

    def prepare(self, stt: bool = True) -> None:
        """Build the words' models now (blocking), and with ``stt`` the pauses' STT: for a
        transceiver whose pauses will ask for them (the local backend's, or with
        --turn-transcribe), so that its first pause does not wait for them to load."""
        if self._text_scorer() is not None and stt:  # each under its lock
            self._pause_stt()

    @property
    def transcribes(self) -> bool:
        """Whether a pause's speech can be transcribed here, for the words. Built on
        first use: not until both models are, and asking starts building them."""
        if self.text is not None and self.stt is not None:
            return True
        if self.text_loader is None and self.text is None:
            return False
        if self.stt_loader is None and self.stt is None:
            return False
        if not self.build_on_first_use:
            return True  # built when first called, on the threads that call them
        if not self._building:
            self._building = True
            log.info("semantic_vad: building the words' models (the audio decides meanwhile)")
            with contextlib.suppress(RuntimeError):  # closed: the transceiver is stopping
                self._stt_executor.submit(self._build_words)
        return False

    def _build_words(self) -> None:
        try:
            self.prepare()
        except Exception:  # a model that raises what _built does not expect: said, not lost
            log.exception("semantic_vad: the words' models could not be built")

    @property
    def transcriptions_full(self) -> bool:
        """Whether ``STT_QUEUE_MAX`` transcriptions already wait: a pause then goes without."""
        return self._transcribing >= STT_QUEUE_MAX

    def start_transcription(
        self, audio: bytes, audio_format: str
    ) -> asyncio.Task[Speculated] | None:
        """:meth:`transcribe` as a task, counted from now (pauses handled in one loop
        iteration see each other's), or None where ``STT_QUEUE_MAX`` already wait."""
        if self.transcriptions_full:
            return None
        self._transcribing += 1
        task = asyncio.create_task(self.transcribe(audio, audio_format))
        task.add_done_callback(self._transcribed)
        return task

    def _transcribed(self, task: asyncio.Task[Speculated]) -> None:
        self._transcribing -= 1

    async def transcribe(self, audio: bytes, audio_format: str) -> Speculated:
        """The words of ``audio`` (wire format), off the loop ("" where Whisper only guessed:
        ``GUESS_LOGPROB``); ``SttError`` without an STT. Uncounted: pauses call
        :meth:`start_transcription`."""
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._stt_executor, self._transcribe, audio, audio_format)
        return text, {}, []

    def _transcribe(self, audio: bytes, audio_format: str) -> str:
        stt = self._pause_stt()
        if stt is None:
            raise SttError("no STT for the words at pauses")
        pcm = to_pcm16(audio, audio_format, MODEL_RATE_HZ)
        transcript = stt.transcribe(pcm, sample_rate_hz=MODEL_RATE_HZ, logprobs=True)
        mean = confidence(transcript)
        if mean is not None and mean < GUESS_LOGPROB:
            log.debug("pause transcript %r taken for a guess (%.2f)", transcript.text, mean)
            return ""  # unknown: the audio decides
        return transcript.text

    def _pause_stt(self) -> PauseTranscriber | None:
        with self._stt_lock:
            loader, self.stt_loader = self.stt_loader, None  # tried once, whatever happens
            self.stt = _built(
                self.stt,
                loader,
                "pauses are transcribed for the words",
                "no STT for the words at pauses",
            )
            return self.stt

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stt_executor.shutdown(wait=False, cancel_futures=True)


def _built(value: T | None, loader: Callable[[], T] | None, built: str, not_built: str) -> T | None:
    """``value``, or what ``loader`` builds (the caller has dropped the loader: a model
    that cannot be built, for whatever reason of the model's, is tried once and said so
    once in the log)."""
    if value is None and loader is not None:
        try:
            value = loader()
            log.info("semantic_vad: %s", built)
        except ModelError as exc:  # TextTurnError, SttError, LlmError (no bundled GGUF)...
            log.warning("semantic_vad: %s (%s)", not_built, exc)
    return value


def load_turn_model(
    path: str | None,
    threshold: float,
    *,
    text_model: str | None = None,
    text_threshold: float = TEXT_THRESHOLD,
    stt_loader: Callable[[], PauseTranscriber] | None = None,
    build_on_first_use: bool = False,
    min_silence_ms: int = MIN_SILENCE_MS,
) -> TurnModel | None:
    """The transceiver's one end-of-turn model (``--turn-model``, default: the file
    scripts/fetch-smart-turn installs), warmed up; ``None``, said once in the log, where
    the default file or the `local` extra is missing. A ``path`` given that cannot be
    loaded is an error (``TurnError``): the option would otherwise have no effect.
    ``text_model``: the words' GGUF (None: bundled SmolLM2, "none": no text check);
    ``stt_loader``: an STT for the words at pauses where the backend has no transcript;
    ``build_on_first_use``: the words' models are built at the first pause that asks."""
    try:
        model = SmartTurn(path)
    except TurnError as exc:
        if path is not None:
            raise
        log.warning(
            "semantic_vad without an end-of-turn model (%s): its turns end only after the "
            "eagerness's max silence (low 8 s, medium and auto 4 s, high 2 s)",
            exc,
        )
        return None
    text_enabled = (text_model or "").lower() != "none"
    if text_enabled and text_model is not None and not Path(text_model).is_file():
        raise TurnError(f"text end-of-turn model not found: {text_model}")
    model.probability(b"\0\0" * MODEL_RATE_HZ, MODEL_RATE_HZ)  # the first call is the slow one
    log.info("semantic_vad: end-of-turn model %s, threshold %.2f", model.path, threshold)
    return TurnModel(
        model,
        threshold,
        min_silence_ms,
        text_loader=partial(TextTurn, text_model) if text_enabled else None,
        text_threshold=text_threshold,
        stt_loader=stt_loader if text_enabled else None,
        build_on_first_use=build_on_first_use,
    )


@dataclass(frozen=True)
class _Question:
    generation: int
    audio: bytes
    audio_format: str
    pause_ms: float
    threshold: float
    min_silence_ms: int  # the shortest pause its "finished" ends the turn at
    words: asyncio.Task[bool] | None = None  # do the words so far allow an end?
    look: int = 0  # the index in LOOKS_MS


class TurnJudge:
    """One session's end-of-turn questions: at most one model call in flight, and a
    pending answer counts only if nothing happened to the turn since it was asked."""

    def __init__(
        self,
        model: TurnModel,
        finished: Callable[[float, int], None],
        session_id: str,
        unsure: Callable[[], None] | None = None,
    ) -> None:
        """``finished(pause_ms, min_silence_ms)`` ends the turn, whose speech paused at
        ``pause_ms``, once the pause has lasted ``min_silence_ms`` (the eagerness's);
        ``unsure()``: the audio and the words disagree about the current pause."""
        self._model = model
        self._finished = finished
        self._unsure = unsure
        self._session_id = session_id
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._waiting: _Question | None = None  # asked while a call was in flight
        self._due: _Question | None = None  # to ask at its pause_ms + LOOKS_MS[look]
        self._words: asyncio.Task[bool] | None = None  # the latest pause's words, scoring
        self._transcript: asyncio.Task[Speculated] | None = None  # ours, the latest pause's

    @property
    def asking(self) -> bool:
        """Whether a model call, or what its answer does, is still to come."""
        return self._task is not None and not self._task.done()

    @property
    def transcribes(self) -> bool:
        """Whether :meth:`pause` transcribes the ``audio`` it is given (the mock, the proxy)."""
        return self._model.transcribes

    def pause(
        self,
        audio_format: str,
        pause_ms: float,
        eagerness: str,
        transcript: asyncio.Task[Speculated] | None = None,
        audio: bytes | None = None,
    ) -> None:
        """Speech paused at ``pause_ms``: the model is to look at it as the pause lasts
        (``LOOKS_MS``: :meth:`look_due`, :meth:`look`), with the session's ``eagerness``'s
        threshold and shortest pause; ``transcript``: the speech so far
        being transcribed, to check the words too; without one, ``audio`` (the turn so
        far) is transcribed here where :attr:`transcribes`. One transcription per session
        at a time: a new pause cancels the last one's if it has not run yet."""
        self._generation += 1
        if self._transcript is not None:
            self._transcript.cancel()
            self._transcript = None
        model = self._model
        if transcript is None and audio is not None and model.transcribes:
            transcript = model.start_transcription(audio, audio_format)
            if transcript is None:  # the queue is full: the audio decides this pause
                log.debug("session %s: no transcript (STT queue full)", self._session_id)
            else:
                transcript.add_done_callback(_retrieve)
                self._transcript = transcript
        words = None
        if transcript is not None:  # scored as soon as it is ready, not when the model is asked
            words = asyncio.create_task(self._words_allow_end(transcript, self._generation))
            self._words = words
        self._due = _Question(
            self._generation,
            b"",
            audio_format,
            pause_ms,
            decision_threshold(model.threshold, eagerness),
            min_silence(model.min_silence_ms, eagerness),
            words,
        )

    def look_due(self, audio_ms: float) -> bool:
        """Is the model to be asked now, the session's audio having reached ``audio_ms``?
        Then the caller hands :meth:`look` the turn so far."""
        due = self._due
        return due is not None and audio_ms >= due.pause_ms + LOOKS_MS[due.look]

    def look(self, audio: bytes) -> None:
        """Ask whether ``audio``, the turn so far (the pause's silence included), is done."""
        question, self._due = self._due, None
        if question is None:
            return
        question = replace(question, audio=audio)
        if self._task is not None and not self._task.done():
            self._waiting = question  # asked when the call in flight returns
            return
        self._task = asyncio.create_task(self._ask(question))

    def forget(self) -> None:
        """Speech resumed, or the turn ended or was reset: any pending answer is void."""
        self._generation += 1
        self._waiting = None
        self._due = None

    def close(self) -> None:
        self.forget()
        for task in (self._task, self._words, self._transcript):
            if task is not None:
                task.cancel()
        self._finished = _ignore
        self._unsure = None

    async def _ask(self, question: _Question) -> None:
        try:
            p = await self._model.probability(question.audio, question.audio_format)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: end-of-turn model failed", self._session_id)
            p = None
        current = question.generation == self._generation
        finished = p is not None and current and p > question.threshold
        unsure = words = False
        if p is not None and current and question.words is not None:
            words = await question.words
            finished, unsure = finished and words, finished != words
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.generation == self._generation:
            self._task = asyncio.create_task(self._ask(waiting))
            return
        if p is None or question.generation != self._generation:
            return
        log.debug(
            "session %s: end of turn p=%.3f threshold=%.2f: %s",
            self._session_id,
            p,
            question.threshold,
            "finished" if finished else "not finished",
        )
        if finished:
            self._generation += 1
            self._finished(question.pause_ms, question.min_silence_ms)
            return
        if unsure and self._unsure is not None:
            self._unsure()
        if question.look + 1 < len(LOOKS_MS) and (question.words is None or words):
            self._due = replace(question, audio=b"", look=question.look + 1)

    async def _words_allow_end(self, transcript: asyncio.Task[Speculated], generation: int) -> bool:
        """Do the words so far end a message? True when unknown, or when the pause is over
        before its transcript is ready (then they are not scored)."""
        done, _ = await asyncio.wait({transcript}, timeout=TRANSCRIPT_WAIT_S)
        if not done or transcript.cancelled() or transcript.exception() is not None:
            return True
        if generation != self._generation:
            return True
        text = transcript.result()[0]
        try:
            lp = await self._model.text_log_probability(text)
        except Exception:
            log.exception("session %s: text end-of-turn model failed", self._session_id)
            return True
        if lp is None:
            return True
        log.debug("session %s: end of turn words %r ln p=%.1f", self._session_id, text, lp)
        return lp > self._model.text_threshold


def _ignore(pause_ms: float, min_silence_ms: int) -> None:
    return None


def _retrieve(task: asyncio.Task[Speculated]) -> None:
    """A transcription's failure is the words' "unknown" (``_words_allow_end``), also
    where nothing awaited it."""
    if not task.cancelled():
        task.exception()
