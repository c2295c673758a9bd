"""semantic_vad's end of turn: at each pause, an end-of-turn model judges whether the user
has finished (https://platform.openai.com/docs/guides/realtime-vad, "Semantic VAD").

The session shell (transceiver/runner.py) runs the speech detector. When speech pauses
(``SilenceStarted``, 100 ms of silence: models/vad.py) it hands this module the turn so
far, which asks the model ONCE, off the event loop. A "finished" answer ends the turn at
once; "not finished" keeps listening, and the turn then ends at the next pause the model
calls finished, or after the eagerness's max timeout of silence
(transceiver/protocol/config.py ``SEMANTIC_VAD_MAX_WAIT_MS``). Speech that resumes voids
a pending answer. The model is asked early, not as the silence grows: it drifts to
"complete" the longer the trailing silence, and it says "complete" on silence and noise
alone, so it is only ever asked after the speech detector heard speech.

Eagerness also moves the decision threshold (the transceiver's ``--turn-threshold``,
default 0.5): ``high`` ends a turn more readily (threshold - 0.2), ``low`` only when the
model is surer (+ 0.2); ``medium`` and ``auto`` use it as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from models.audio import to_pcm16
from models.turn import EndOfTurn, SmartTurn, TurnError

log = logging.getLogger(__name__)

MODEL_RATE_HZ = 16_000
# The model sees the last 8 s (models/turn.py); the turn is taken from a little before
# the speech detector's start (which already includes the prefix padding).
TURN_WINDOW_MS = 8_000
LEAD_MS = 200
EAGERNESS_SHIFT = {"low": 0.2, "medium": 0.0, "auto": 0.0, "high": -0.2}
# Model calls run on this many threads per transceiver; more pauses at once wait their turn.
TURN_WORKERS = 2


def decision_threshold(base: float, eagerness: str) -> float:
    """The probability above which a pause ends the turn, at this eagerness."""
    return min(0.95, max(0.05, base + EAGERNESS_SHIFT.get(eagerness, 0.0)))


def _probability(model: EndOfTurn, audio: bytes, audio_format: str) -> float:
    return model.probability(to_pcm16(audio, audio_format, MODEL_RATE_HZ), MODEL_RATE_HZ)


@dataclass
class TurnModel:
    """The end-of-turn model one transceiver shares between all its sessions, with the
    threads its (blocking, ~75 ms of CPU) calls run on."""

    model: EndOfTurn
    threshold: float = 0.5
    workers: int = TURN_WORKERS
    _executor: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="end-of-turn")

    async def probability(self, audio: bytes, audio_format: str) -> float:
        """P(the turn in ``audio``, wire format, is complete), computed off the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _probability, self.model, audio, audio_format
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def load_turn_model(path: str | None, threshold: float) -> TurnModel | None:
    """The transceiver's one end-of-turn model (``--turn-model``, default: the file
    scripts/fetch-smart-turn installs), warmed up; ``None``, said once in the log, where
    the default file or the `local` extra is missing. A ``path`` given that cannot be
    loaded is an error (``TurnError``): the option would otherwise have no effect."""
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
    model.probability(b"\0\0" * MODEL_RATE_HZ, MODEL_RATE_HZ)  # the first call is the slow one
    log.info("semantic_vad: end-of-turn model %s, threshold %.2f", model.path, threshold)
    return TurnModel(model, threshold)


@dataclass(frozen=True)
class _Question:
    generation: int
    audio: bytes
    audio_format: str
    pause_ms: float
    threshold: float


class TurnJudge:
    """One session's end-of-turn questions: at most one model call in flight, and a
    pending answer counts only if nothing happened to the turn since it was asked."""

    def __init__(
        self, model: TurnModel, finished: Callable[[float], None], session_id: str
    ) -> None:
        """``finished(pause_ms)`` ends the turn, whose speech paused at ``pause_ms``."""
        self._model = model
        self._finished = finished
        self._session_id = session_id
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._waiting: _Question | None = None  # asked while a call was in flight

    @property
    def threshold(self) -> float:
        return self._model.threshold

    def pause(self, audio: bytes, audio_format: str, pause_ms: float, threshold: float) -> None:
        """Speech paused at ``pause_ms``: ask whether ``audio`` (the turn so far) is done."""
        self._generation += 1
        question = _Question(self._generation, audio, audio_format, pause_ms, threshold)
        if self._task is not None and not self._task.done():
            self._waiting = question  # asked when the call in flight returns
            return
        self._task = asyncio.create_task(self._ask(question))

    def forget(self) -> None:
        """Speech resumed, or the turn ended or was reset: any pending answer is void."""
        self._generation += 1
        self._waiting = None

    def close(self) -> None:
        self.forget()
        if self._task is not None:
            self._task.cancel()
        self._finished = _ignore

    async def _ask(self, question: _Question) -> None:
        try:
            p = await self._model.probability(question.audio, question.audio_format)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: end-of-turn model failed", self._session_id)
            p = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.generation == self._generation:
            self._task = asyncio.create_task(self._ask(waiting))
            return
        if p is None or question.generation != self._generation:
            return
        finished = p > question.threshold
        log.debug(
            "session %s: end of turn p=%.3f threshold=%.2f: %s",
            self._session_id,
            p,
            question.threshold,
            "finished" if finished else "not finished",
        )
        if finished:
            self._generation += 1
            self._finished(question.pause_ms)


def _ignore(pause_ms: float) -> None:
    return None
