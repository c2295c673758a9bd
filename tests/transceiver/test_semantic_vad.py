"""semantic_vad in the session shell, with a scripted end-of-turn model (transceiver/turns.py).

Audio is fed faster than real time: every duration here is session audio time, which is
what the speech detector and the eagerness timeouts count.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from models.errors import LlmError
from models.stt import Transcript
from tests.transceiver.test_speculation import SILENCE_MS, Client, ScriptedBackend, settle, speech
from tests.waiting import eventually
from transceiver.backends.base import ResponseSink
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.effects import ResponseRequest
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner
from transceiver.turns import (
    LOOKS_MS,
    MODEL_RATE_HZ,
    STT_QUEUE_MAX,
    TurnJudge,
    TurnModel,
    decision_threshold,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


class ScriptedTurns:
    """An end-of-turn model that answers from a script (the last answer repeats), and
    waits for ``gate`` before answering."""

    def __init__(self, *answers: float) -> None:
        self.answers = answers
        self.gate = threading.Event()
        self.gate.set()
        self.asked: list[float] = []  # seconds of audio per call, when called
        self.answered = 0

    def probability(self, pcm16: bytes, sample_rate_hz: int) -> float:
        assert sample_rate_hz == MODEL_RATE_HZ
        self.asked.append(len(pcm16) / 2 / sample_rate_hz)
        assert self.gate.wait(10)
        answer = self.answers[min(len(self.asked), len(self.answers)) - 1]
        self.answered += 1
        return answer


class ScriptedWords:
    """The words' model (transceiver/turns.py ``TextScorer``): one log-probability for every
    text, or an exception."""

    def __init__(self, log_probability: float | Exception) -> None:
        self.answer = log_probability
        self.scored: list[str] = []

    def log_probability(self, text: str) -> float:
        self.scored.append(text)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class SlowBackend(ScriptedBackend):
    """Replies with one text delta, then goes on until cancelled."""

    async def respond(
        self, request: ResponseRequest, sink: ResponseSink, state: dict[str, Any]
    ) -> str | None:
        self.requests.append(request)
        await sink.text("reply")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None


class Shell:
    """A session shell with semantic_vad, fed audio by the test."""

    def __init__(
        self,
        td: dict[str, Any],
        model: ScriptedTurns | None,
        *,
        backend: ScriptedBackend | None = None,
        kind: SessionKind = SessionKind.REALTIME,
        words: ScriptedWords | None = None,
        min_silence_ms: int = 0,
    ) -> None:
        """``min_silence_ms``: the shortest pause a "finished" ends (the transceiver's
        --turn-min-silence-ms); 0 here, so that the tests of the judge's logic need not
        feed it; its own tests below set it."""
        self.backend = backend or ScriptedBackend()
        self.client = Client()
        self.model = model
        self.session = RealtimeSession(SessionSpec(kind=kind, model="gpt-realtime"))
        config: dict[str, Any] = {"audio": {"input": {"turn_detection": td}}}
        if kind is SessionKind.REALTIME:
            config.update(type="realtime", output_modalities=["text"])
        else:
            config.update(type="transcription")
        self.session.receive_client_event({"type": "session.update", "session": config}, 0)
        turn_model = (
            TurnModel(model, text=words, min_silence_ms=min_silence_ms)
            if model is not None
            else None
        )
        self.runner = SessionRunner(
            self.session,
            self.backend,  # type: ignore[arg-type]
            self.client.send,
            self.client.close,
            turn_model=turn_model,
        )
        self.task = asyncio.create_task(self.runner.run(self.client.frames()))

    async def feed(self, pcm: bytes) -> None:
        self.client.append(pcm)
        await settle()
        await eventually(lambda: self.client.incoming.empty(), 5, 0.005, "audio read")
        await settle()

    async def answered(self, count: int) -> None:
        assert self.model is not None
        await eventually(lambda: self.model.answered >= count, 5, 0.005, "model answers")
        judge = self.runner._judge
        assert judge is not None
        await eventually(lambda: not judge.asking, 5, 0.005, "the answer taken")
        await settle()

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.client.events if e["type"] == type_]

    async def stopped(self) -> dict[str, Any]:
        stops = await eventually(
            lambda: self.of_type("input_audio_buffer.speech_stopped"), 5, 0.005, "speech_stopped"
        )
        assert len(stops) == 1
        return stops[0]

    async def close(self) -> None:
        self.client.incoming.put_nowait(None)
        await self.task


def semantic(eagerness: str = "auto", **fields: Any) -> dict[str, Any]:
    return {"type": "semantic_vad", "eagerness": eagerness, **fields}


def silence(ms: int) -> bytes:
    return SILENCE_MS * ms


QUESTION = speech("what is the time please")
LOOK = LOOKS_MS[0] + 40  # silence enough for the model's first look


@pytest.mark.parametrize(
    ("eagerness", "max_wait_ms"), [("low", 8000), ("medium", 4000), ("high", 2000), ("auto", 4000)]
)
async def test_the_turn_ends_after_the_eagerness_timeout_when_the_model_says_not_finished(
    eagerness: str, max_wait_ms: int
) -> None:
    shell = Shell(semantic(eagerness), ScriptedTurns(0.01))
    await shell.feed(QUESTION)
    await shell.feed(silence(max_wait_ms - 100))
    await shell.answered(1)
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    stopped = await shell.stopped()
    started = shell.of_type("input_audio_buffer.speech_started")[0]
    assert stopped["item_id"] == started["item_id"]
    assert shell.model is not None and len(shell.model.asked) == 1  # once, at the pause
    await eventually(lambda: shell.of_type("response.done"), 5, 0.01, "a reply")
    await shell.close()


async def test_without_a_model_the_turn_ends_after_the_eagerness_timeout() -> None:
    shell = Shell(semantic("high"), None)
    await shell.feed(QUESTION + silence(1900))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    await shell.stopped()
    await shell.close()


async def test_a_finished_answer_ends_the_turn_right_after_the_pause() -> None:
    model = ScriptedTurns(0.9)
    model.gate.clear()
    shell = Shell(semantic(), model)
    await shell.feed(QUESTION)
    speech_ms = len(QUESTION) / 48
    await shell.feed(silence(LOOK))  # the model is asked 100 ms into the pause
    await eventually(lambda: model.asked, 5, 0.005, "the model asked")
    # While the model thinks, the speculation runs: a transcript, and the reply ahead.
    await eventually(lambda: shell.backend.requests, 5, 0.005, "the reply generated ahead")
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    model.gate.set()
    stopped = await shell.stopped()  # no more audio was fed: 120 ms of silence in all
    assert speech_ms - 200 < stopped["audio_end_ms"] <= speech_ms
    # The turn so far, from a little before its speech, went to the model at 16 kHz.
    assert speech_ms / 1000 < model.asked[0] < (speech_ms + LOOK + 300 + 200 + 40) / 1000
    done = (await eventually(lambda: shell.of_type("response.done"), 5, 0.01, "a reply"))[0]
    # The speculative transcript and the reply made ahead were used: no second STT.
    assert len(shell.backend.transcribed) == 1
    assert [r.response_id for r in shell.backend.requests] == ["resp_preview"]
    assert done["response"]["output"][0]["content"][0]["text"] == "reply to words 1"
    await shell.close()


async def test_speech_that_resumes_voids_the_pending_answer_and_the_turn_goes_on() -> None:
    model = ScriptedTurns(0.9)
    model.gate.clear()
    shell = Shell(semantic("high"), model)
    first, second = speech("i would like a pizza with"), speech("mushrooms and extra cheese")
    await shell.feed(first + silence(LOOK))
    await eventually(lambda: model.asked, 5, 0.005, "the model asked")
    await shell.feed(second + silence(LOOK))  # speech resumed, then a second pause
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    model.gate.set()  # the first answer ("finished") comes back void; the second counts
    stopped = await shell.stopped()
    assert len(model.asked) == 2 and model.asked[1] > model.asked[0] + len(second) / 48_000
    (committed,) = shell.of_type("input_audio_buffer.committed")
    assert committed["item_id"] == stopped["item_id"]
    assert len(shell.of_type("input_audio_buffer.speech_started")) == 1
    await eventually(lambda: shell.of_type("response.done"), 5, 0.01, "a reply")
    (user,) = [s for s in shell.session.conversation.items() if s.item["role"] == "user"]
    assert user.item["id"] == stopped["item_id"]
    assert len(user.audio) >= len(first) + len(second)  # one item holds both halves
    assert shell.backend.transcribed[-1] >= (len(first) + len(second)) / 48_000
    await shell.close()


async def test_a_not_finished_answer_keeps_listening_and_the_next_pause_asks_again() -> None:
    model = ScriptedTurns(0.01, 0.9)
    shell = Shell(semantic(), model)
    await shell.feed(speech("i would like a pizza with") + silence(600))
    await shell.answered(1)
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(speech("mushrooms and extra cheese") + silence(LOOK))
    await shell.stopped()
    assert len(model.asked) == 2
    assert len(shell.of_type("input_audio_buffer.committed")) == 1
    await shell.close()


async def test_a_second_look_at_the_same_pause_can_end_the_turn_there() -> None:
    # "Not yet" after 100 ms of silence; 200 ms after the speech paused the model looks
    # again at the turn with more of the silence, says finished, and the turn ends where
    # the speech paused, long before the eagerness's max timeout.
    model = ScriptedTurns(0.2, 0.9)
    shell = Shell(semantic(), model)
    speech_ms = len(QUESTION) / 48
    await shell.feed(QUESTION + silence(LOOK))
    await shell.answered(1)
    # Audio goes on in 20 ms chunks, as a client streams it: the second look is asked
    # with the first chunk past 200 ms of pause once the first answer is in (the pause
    # counts from the last voiced frame, which may come before the silence fed); then
    # its answer ends the turn with no more audio, long before the max timeout.
    fed_ms = LOOK
    while len(model.asked) < 2 and fed_ms < 1000:
        await shell.feed(silence(20))
        fed_ms += 20
    stopped = await shell.stopped()
    assert len(model.asked) == 2 and model.asked[1] > model.asked[0]
    assert speech_ms - 200 < stopped["audio_end_ms"] <= speech_ms
    await shell.feed(silence(1000))
    assert len(model.asked) == 2
    await shell.close()


async def test_the_second_look_is_the_last_one_at_that_pause() -> None:
    model = ScriptedTurns(0.01)
    shell = Shell(semantic("high"), model)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.answered(1)
    for _ in range(8):
        await shell.feed(silence(100))
    await shell.answered(2)
    assert len(model.asked) == 2 and shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(1200))  # high: 2 s of silence in all
    await shell.stopped()
    assert len(model.asked) == 2
    await shell.close()


async def test_speech_that_resumes_before_the_second_look_cancels_it() -> None:
    model = ScriptedTurns(0.01, 0.9)
    shell = Shell(semantic(), model)
    await shell.feed(speech("i would like a pizza with") + silence(LOOK))
    await shell.answered(1)
    await shell.feed(speech("mushrooms"))
    await shell.feed(silence(40))  # past the first pause's 200 ms, but speech came back
    assert len(model.asked) == 1
    await shell.feed(silence(80))  # the next pause: asked (0.9, finished)
    await shell.stopped()
    assert len(model.asked) == 2
    await shell.close()


async def test_no_second_look_where_the_words_cannot_end_a_message() -> None:
    words = ScriptedWords(-20.0)
    model = ScriptedTurns(0.01, 0.9)
    shell = Shell(semantic("high"), model, words=words)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    for _ in range(5):
        await shell.feed(silence(100))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(1500))  # high: the turn ends after 2 s of silence
    await shell.stopped()
    assert len(model.asked) == 1
    await shell.close()


async def test_a_second_look_with_words_that_allow_an_end_does_not_score_them_again() -> None:
    words = ScriptedWords(-5.0)
    model = ScriptedTurns(0.01, 0.9)
    shell = Shell(semantic(), model, words=words)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    await shell.feed(silence(100))
    await shell.stopped()
    assert len(model.asked) == 2 and words.scored == ["words 1"]
    await shell.close()


async def test_barge_in_cancels_the_response_with_semantic_vad() -> None:
    shell = Shell(semantic(), ScriptedTurns(0.9), backend=SlowBackend())
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    await eventually(lambda: shell.of_type("response.output_text.delta"), 5, 0.01, "replying")
    await shell.feed(speech("wait a moment"))
    (done,) = await eventually(lambda: shell.of_type("response.done"), 5, 0.01, "cancelled")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert shell.backend.cancelled == 1
    await shell.close()


async def test_interrupt_response_false_lets_the_response_go_on() -> None:
    td = semantic(interrupt_response=False)
    shell = Shell(td, ScriptedTurns(0.9), backend=SlowBackend())
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    await eventually(lambda: shell.of_type("response.output_text.delta"), 5, 0.01, "replying")
    await shell.feed(speech("wait a moment"))
    assert len(shell.of_type("input_audio_buffer.speech_started")) == 2
    assert shell.of_type("response.done") == [] and shell.backend.cancelled == 0
    await shell.close()


async def test_create_response_false_commits_without_a_response() -> None:
    shell = Shell(semantic(create_response=False), ScriptedTurns(0.9))
    await shell.feed(QUESTION + silence(LOOK))
    stopped = await shell.stopped()
    (committed,) = shell.of_type("input_audio_buffer.committed")
    assert committed["item_id"] == stopped["item_id"]
    await shell.feed(silence(200))
    assert shell.of_type("response.created") == [] and shell.backend.requests == []
    await shell.close()


async def test_a_transcription_session_with_semantic_vad() -> None:
    shell = Shell(semantic("high"), ScriptedTurns(0.9), kind=SessionKind.TRANSCRIPTION)
    assert not any(e["type"] == "error" for e in shell.client.events)
    await shell.feed(QUESTION + silence(LOOK))
    stopped = await shell.stopped()
    done = await eventually(
        lambda: shell.of_type("conversation.item.input_audio_transcription.completed"),
        5,
        0.01,
        "a transcript",
    )
    assert done[0]["item_id"] == stopped["item_id"]
    assert shell.of_type("response.created") == []
    await shell.close()


async def test_server_vad_never_asks_the_model() -> None:
    model = ScriptedTurns(0.9)
    shell = Shell({"type": "server_vad"}, model)
    await shell.feed(QUESTION + silence(600))
    await shell.stopped()
    assert model.asked == []
    await shell.close()


async def test_eagerness_moves_the_decision_threshold() -> None:
    assert decision_threshold(0.5, "auto") == decision_threshold(0.5, "medium") == 0.5
    assert decision_threshold(0.5, "high") == pytest.approx(0.3)
    assert decision_threshold(0.5, "low") == pytest.approx(0.7)
    assert decision_threshold(0.9, "low") == 0.95 and decision_threshold(0.1, "high") == 0.05


async def test_a_low_eagerness_needs_a_surer_model() -> None:
    # 0.6 ends a medium turn at the pause; a low one waits (threshold 0.7).
    shell = Shell(semantic("low"), ScriptedTurns(0.6))
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.close()
    shell = Shell(semantic("medium"), ScriptedTurns(0.6))
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    await shell.close()


async def test_a_finished_answer_ends_the_turn_once_the_pause_lasts_its_shortest() -> None:
    # --turn-min-silence-ms 270: a "finished" 140 ms into the pause ends the turn once the
    # pause has lasted 270 ms, where the speech paused (low: twice as long), never sooner.
    for eagerness, shortest_ms in (("auto", 270), ("low", 540)):
        shell = Shell(semantic(eagerness), ScriptedTurns(0.95), min_silence_ms=270)
        speech_ms = len(QUESTION) / 48
        fed_ms = speech_ms + LOOK
        await shell.feed(QUESTION + silence(LOOK))
        await shell.answered(1)
        while not shell.of_type("input_audio_buffer.speech_stopped") and fed_ms < speech_ms + 1500:
            await shell.feed(silence(20))
            fed_ms += 20
        stopped = await shell.stopped()
        assert speech_ms - 200 < stopped["audio_end_ms"] <= speech_ms
        pause_ms = fed_ms - stopped["audio_end_ms"]  # the silence when the turn ended
        assert pause_ms >= shortest_ms, (eagerness, pause_ms)  # never sooner
        await shell.close()
    # high: at once, with no more audio.
    shell = Shell(semantic("high"), ScriptedTurns(0.95), min_silence_ms=270)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.answered(1)
    await shell.stopped()
    await shell.close()


async def test_speech_that_resumes_within_the_shortest_pause_keeps_the_turn() -> None:
    # A comma: "finished" at 140 ms, the speaker goes on at 200 ms; one turn, both parts.
    shell = Shell(semantic(), ScriptedTurns(0.95), min_silence_ms=270)
    first, second = speech("i need apples"), speech("oranges and grapes")
    await shell.feed(first + silence(LOOK))
    await shell.answered(1)
    await shell.feed(silence(60) + second + silence(LOOK))
    await shell.answered(2)
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    fed_ms = LOOK
    while not shell.of_type("input_audio_buffer.speech_stopped") and fed_ms < 1500:
        await shell.feed(silence(20))
        fed_ms += 20
    stopped = await shell.stopped()
    assert stopped["audio_end_ms"] > (len(first) + len(second)) / 48
    assert len(shell.of_type("input_audio_buffer.speech_started")) == 1
    await shell.close()


async def test_a_failing_model_falls_back_to_the_timeout() -> None:
    class Broken(ScriptedTurns):
        def probability(self, pcm16: bytes, sample_rate_hz: int) -> float:
            self.answered += 1
            raise RuntimeError("broken model")

    shell = Shell(semantic("high"), Broken())
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(1500))
    await shell.stopped()
    assert not any(e["type"] == "error" for e in shell.client.events)
    await shell.close()


async def test_words_that_cannot_end_a_message_keep_the_turn_open_for_half_the_wait() -> None:
    # The audio says finished; the transcript so far ("words 1") scores below the threshold:
    # the pause ends the turn after half of auto's 4 s, not at once and not after 4 s.
    words = ScriptedWords(-20.0)
    shell = Shell(semantic("auto"), ScriptedTurns(0.9), words=words)
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    assert words.scored == ["words 1"]
    await shell.feed(silence(1300))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    await shell.stopped()
    await shell.close()


async def test_words_that_can_end_a_message_let_the_turn_end_at_the_pause() -> None:
    words = ScriptedWords(-5.0)
    shell = Shell(semantic(), ScriptedTurns(0.9), words=words)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    assert words.scored == ["words 1"]
    await shell.close()


async def test_words_that_end_a_message_after_audio_that_does_not_give_half_the_wait() -> None:
    words = ScriptedWords(-5.0)
    shell = Shell(semantic("auto"), ScriptedTurns(0.01), words=words)
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    await shell.feed(silence(1300))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    await shell.stopped()
    await shell.close()


async def test_when_both_say_not_finished_the_turn_waits_the_whole_max_timeout() -> None:
    words = ScriptedWords(-20.0)
    shell = Shell(semantic("auto"), ScriptedTurns(0.01), words=words)
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    await shell.feed(silence(3300))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    await shell.stopped()
    await shell.close()


async def test_a_failing_words_model_lets_the_audio_decide() -> None:
    words = ScriptedWords(RuntimeError("broken words"))
    shell = Shell(semantic(), ScriptedTurns(0.9), words=words)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    assert words.scored == ["words 1"]
    await shell.close()


class ScriptedStt:
    """The STT for the words at a pause (transceiver/turns.py ``PauseTranscriber``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.heard: list[float] = []  # seconds of audio per call

    def transcribe(
        self, pcm16: bytes, *, sample_rate_hz: int, logprobs: bool = False
    ) -> Transcript:
        assert sample_rate_hz == MODEL_RATE_HZ
        self.heard.append(len(pcm16) / 2 / sample_rate_hz)
        return Transcript(text=self.text, language="en", duration_s=self.heard[-1])


def without_transcripts() -> ScriptedBackend:
    """A backend that does not transcribe at pauses (as the mock and the proxy)."""
    backend = ScriptedBackend()
    backend.speculative_stt = False
    return backend


async def test_turn_transcribe_judges_the_words_where_the_backend_has_no_transcript() -> None:
    # --turn-transcribe: the audio says finished, the pause's own transcript does not end a
    # message: the turn stays open for half the wait, as with the local backend's words.
    words, stt = ScriptedWords(-20.0), ScriptedStt("i want to go to the")
    model = ScriptedTurns(0.9)
    shell = Shell(semantic("auto"), model, backend=without_transcripts(), words=words)
    assert shell.runner._judge is not None
    shell.runner._judge._model.stt = stt
    await shell.feed(QUESTION + silence(600))
    await shell.answered(1)
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    assert words.scored == ["i want to go to the"]
    assert len(stt.heard) == 1  # the turn so far, at 16 kHz, from a little before its speech
    speech_s = len(QUESTION) / 48_000
    assert speech_s < stt.heard[0] < speech_s + 0.6
    assert shell.backend.transcribed == []  # the backend was not asked
    await shell.feed(silence(1300))
    assert shell.of_type("input_audio_buffer.speech_stopped") == []
    await shell.feed(silence(200))
    await shell.stopped()
    await shell.close()


async def test_without_turn_transcribe_the_audio_decides_where_there_is_no_transcript() -> None:
    words = ScriptedWords(-20.0)
    shell = Shell(semantic("auto"), ScriptedTurns(0.9), backend=without_transcripts(), words=words)
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()
    assert words.scored == []
    await shell.close()


async def test_a_words_model_that_cannot_load_is_tried_once() -> None:
    # A model error of any kind (here the LLM's: no bundled GGUF) leaves the audio to decide,
    # said once; the loader is not called again at every pause, nor does a pause's speech
    # get transcribed for words that will not be judged.
    calls = []

    def load() -> ScriptedWords:
        calls.append(1)
        raise LlmError("no bundled GGUF")

    model = TurnModel(ScriptedTurns(0.9), text_loader=load, stt=ScriptedStt("words"))
    try:
        assert model.transcribes
        assert model._score_text("i want to") is None
        assert model._score_text("i want to go") is None
        assert calls == [1] and not model.transcribes
    finally:
        model.close()


def recording_loaders(
    built: list[str],
) -> tuple[Callable[[], ScriptedWords], Callable[[], ScriptedStt]]:
    """Loaders of the words' model and the pause STT that note in ``built`` when they run."""

    def words() -> ScriptedWords:
        built.append("words")
        return ScriptedWords(-5.0)

    def stt() -> ScriptedStt:
        built.append("stt")
        return ScriptedStt("why is the sky blue")

    return words, stt


async def test_prepare_builds_the_words_models_before_the_first_pause() -> None:
    # A transceiver whose pauses will ask for the words (the local backend, --turn-transcribe)
    # builds them at start; the pauses then find them built.
    built: list[str] = []
    words, stt = recording_loaders(built)
    model = TurnModel(ScriptedTurns(0.9), text_loader=words, stt_loader=stt)
    try:
        await asyncio.to_thread(model.prepare)
        assert built == ["words", "stt"]
        text, _, _ = await model.transcribe(b"\0\0" * 2400, "pcm16")
        assert await model.text_log_probability(text) == -5.0
        assert built == ["words", "stt"]  # not built again
    finally:
        model.close()


async def test_prepare_skips_the_stt_when_the_words_model_cannot_load() -> None:
    built: list[str] = []

    def words() -> ScriptedWords:
        raise LlmError("no bundled GGUF")

    def stt() -> ScriptedStt:
        built.append("stt")
        return ScriptedStt("words")

    model = TurnModel(ScriptedTurns(0.9), text_loader=words, stt_loader=stt)
    try:
        await asyncio.to_thread(model.prepare)
        assert built == [] and not model.transcribes
    finally:
        model.close()


async def test_by_default_the_words_models_are_built_at_the_first_pause_that_asks() -> None:
    # The mock's default (no --turn-transcribe given): nothing is built until a pause would
    # use the words; that pause and those until the models are ready go by the audio.
    built: list[str] = []
    words, stt = recording_loaders(built)
    model = TurnModel(
        ScriptedTurns(0.9), text_loader=words, stt_loader=stt, build_on_first_use=True
    )
    try:
        assert built == []
        assert not model.transcribes  # starts the build
        assert await eventually(lambda: model.transcribes, 5, 0.005, "the words' models built")
        assert built == ["words", "stt"]  # once, however often it was asked
    finally:
        model.close()


async def test_a_session_is_judged_by_the_words_once_they_are_built() -> None:
    words, stt = ScriptedWords(-20.0), ScriptedStt("i want to go to the")
    shell = Shell(semantic("auto"), ScriptedTurns(0.9), backend=without_transcripts())
    assert shell.runner._judge is not None
    model = shell.runner._judge._model
    model.text_loader, model.stt_loader = (lambda: words), (lambda: stt)
    model.build_on_first_use = True
    await shell.feed(QUESTION + silence(LOOK))
    await shell.stopped()  # the first pause: the audio alone, while the words are built
    assert words.scored == [] and stt.heard == []
    await eventually(lambda: model.transcribes, 5, 0.005, "the words' models built")
    shell.client.events.clear()
    await shell.feed(QUESTION + silence(600))
    await eventually(lambda: words.scored, 5, 0.005, "the words scored")
    await settle()
    assert shell.of_type("input_audio_buffer.speech_stopped") == []  # the words keep it open
    await shell.close()


class GatedStt(ScriptedStt):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.gate = threading.Event()

    def transcribe(
        self, pcm16: bytes, *, sample_rate_hz: int, logprobs: bool = False
    ) -> Transcript:
        assert self.gate.wait(10)
        return super().transcribe(pcm16, sample_rate_hz=sample_rate_hz, logprobs=logprobs)


async def test_a_pause_goes_without_its_words_when_the_stt_queue_is_full() -> None:
    # Many sessions pausing at once (a load test of semantic_vad): past STT_QUEUE_MAX
    # transcriptions waiting, a pause is judged at once by the audio, not after the queue.
    words, stt = ScriptedWords(-20.0), GatedStt("i want to go to the")
    shell = Shell(semantic("auto"), ScriptedTurns(0.9), backend=without_transcripts(), words=words)
    assert shell.runner._judge is not None
    model = shell.runner._judge._model
    model.stt = stt
    queued = [model.start_transcription(b"\0\0" * 480, "pcm16") for _ in range(STT_QUEUE_MAX)]
    try:
        await eventually(lambda: model.transcriptions_full, 5, 0.005, "the queue full")
        await shell.feed(QUESTION + silence(LOOK))
        await shell.stopped()
        assert shell.runner._judge._transcript is None  # none asked for this pause
        assert words.scored == []
    finally:
        stt.gate.set()
        await asyncio.gather(*(task for task in queued if task is not None))
    assert not model.transcriptions_full
    await shell.close()


async def test_pauses_in_one_loop_iteration_queue_at_most_the_bound() -> None:
    # Many sessions whose pauses are handled in one loop iteration (frames read together)
    # count each other's transcriptions: no more than STT_QUEUE_MAX are queued.
    stt = GatedStt("i want to go to the")
    model = TurnModel(ScriptedTurns(0.9), text=ScriptedWords(-5.0), stt=stt)
    judges = [TurnJudge(model, lambda pause, shortest: None, f"sess_{n}") for n in range(20)]
    try:
        for judge in judges:
            judge.pause("pcm16", 300.0, "auto", audio=b"\0\0" * 480)
        started = [judge._transcript for judge in judges if judge._transcript is not None]
        assert len(started) == STT_QUEUE_MAX and model.transcriptions_full
        stt.gate.set()
        await asyncio.gather(*started)
        assert await eventually(
            lambda: not model.transcriptions_full, 5, 0.005, "the queue drained"
        )
    finally:
        for judge in judges:
            judge.close()
        model.close()


async def test_a_pause_after_the_model_is_closed_does_not_raise() -> None:
    # A session pausing while the transceiver stops: no build is started, the audio decides.
    words, stt = recording_loaders([])
    model = TurnModel(
        ScriptedTurns(0.9), text_loader=words, stt_loader=stt, build_on_first_use=True
    )
    model.close()
    assert not model.transcribes
