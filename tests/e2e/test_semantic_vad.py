"""semantic_vad with the real end-of-turn model (models/turn.py, Smart Turn v3.2), through
the official SDK against ``serve --backend mock`` on loopback, with piper speech.

Audio is sent as fast as the connection takes it: the speech detector and the eagerness
timeouts count audio time, so "how much silence was sent" is exact whatever the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from openai import AsyncOpenAI

from models.audio import resample
from models.tts import PiperTts
from models.turn import bundled_turn_model_path
from tests.e2e.client import Recorder, append_audio, silence
from tests.servers import RunningServer
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        not bundled_turn_model_path().is_file(),
        reason="no end-of-turn model (scripts/fetch-smart-turn)",
    ),
]


@pytest.fixture(scope="module")
def voice() -> Iterator[PiperTts]:
    yield PiperTts(varied=False)


def spoken(voice: PiperTts, text: str) -> bytes:
    """``text`` in piper's voice, PCM16 at the wire's 24 kHz."""
    return resample(voice.synthesize(text), voice.sample_rate_hz, 24_000)


def cut_before(full: bytes, prefix: bytes) -> bytes:
    """``full`` cut where it says ``prefix``: at its quietest 20 ms near the prefix's
    length, so the cut keeps the sentence's mid-sentence prosody."""
    samples = np.frombuffer(full, dtype="<i2").astype(np.float64)
    n = len(prefix) // 2
    frames = range(max(0, n - 6000), min(len(samples) - 480, n + 2400), 120)
    start = min(frames, key=lambda s: float(np.mean(samples[s : s + 480] ** 2)))
    return full[: 2 * start]


async def semantic_session(server: RunningServer, eagerness: str) -> tuple[AsyncOpenAI, dict]:
    td = {"type": "semantic_vad", "eagerness": eagerness}
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": td}},
        },
    }
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url), update


async def test_a_finished_question_is_committed_at_the_pause(
    mock_server: RunningServer, voice: PiperTts
) -> None:
    client, update = await semantic_session(mock_server, "auto")
    question = silence(300) + spoken(voice, "What is the weather like in Paris today?")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update)
        await rec.until("session.updated")
        # 200 ms of silence and nothing more: the 4 s timeout of eagerness auto cannot
        # end this turn; only the model's "finished" at the pause can.
        await append_audio(rec, question + silence(200))
        stopped = await rec.until("input_audio_buffer.speech_stopped", timeout_s=10)
        committed = await rec.until("input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"]
        assert stopped["audio_end_ms"] <= len(question) / 48 + 20
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        rec.check()


async def test_a_mid_sentence_pause_does_not_end_the_turn(
    mock_server: RunningServer, voice: PiperTts
) -> None:
    client, update = await semantic_session(mock_server, "low")
    full = spoken(voice, "I would like to order a pizza with mushrooms and extra cheese.")
    first = cut_before(full, spoken(voice, "I would like to order a pizza with"))
    second = full[len(first) :]
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update)
        await rec.until("session.updated")
        await append_audio(rec, silence(300) + first + silence(900) + second + silence(300))
        # Whatever the model says at the end, eagerness low's 8 s timeout ends the turn.
        await append_audio(rec, silence(8200))
        committed = await rec.until("input_audio_buffer.committed", timeout_s=15)
        await rec.until("response.done")
        assert len(rec.of_type("input_audio_buffer.speech_started")) == 1
        assert [e["item_id"] for e in rec.of_type("input_audio_buffer.committed")] == [
            committed["item_id"]
        ]
        stopped = rec.of_type("input_audio_buffer.speech_stopped")[0]
        # The item holds both halves: it ends after the second one.
        assert stopped["audio_end_ms"] > (len(first) + len(second)) / 48
        rec.check()


async def test_the_words_keep_a_pause_the_audio_calls_final_open(
    mock_server: RunningServer, voice: PiperTts
) -> None:
    # "Can you remind me to" sounds final to the audio model (0.97 in piper's voice), and
    # does not read as a finished message (ln p about -21 against the threshold -14): the
    # mock's own transcript of the pause keeps the turn open, where the audio alone cut it.
    # The words' models are built at the mock's first semantic_vad pause: this test's first
    # session starts that.
    client, update = await semantic_session(mock_server, "auto")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update)
        await rec.until("session.updated")
        await append_audio(rec, silence(300) + spoken(voice, "What time is it?") + silence(4200))
        await rec.until("input_audio_buffer.speech_stopped", timeout_s=15)
    built = "pauses are transcribed for the words"  # transceiver/turns.py's log
    await eventually(
        lambda: any(built in line for line in mock_server.lines), 60, 0.05, "the words' models"
    )
    full = spoken(voice, "Can you remind me to call my mother?")
    first = cut_before(full, spoken(voice, "Can you remind me to"))
    second = full[len(first) :]
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update)
        await rec.until("session.updated")
        await append_audio(rec, silence(300) + first)
        # The pause in real time, as a caller's: the models answer while it lasts.
        for _ in range(45):
            await append_audio(rec, silence(20))
            await asyncio.sleep(0.02)
        await append_audio(rec, second + silence(4200))
        await rec.until("input_audio_buffer.committed", timeout_s=15)
        await rec.until("response.done")
        assert len(rec.of_type("input_audio_buffer.committed")) == 1
        stopped = rec.of_type("input_audio_buffer.speech_stopped")[0]
        assert stopped["audio_end_ms"] > 300 + len(first) / 48 + 900  # both halves
        rec.check()


async def test_a_transcription_session_ends_turns_at_the_models_word(
    mock_server: RunningServer, voice: PiperTts
) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url)
    question = silence(300) + spoken(voice, "Please turn off the lights in the kitchen.")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        td = {"type": "semantic_vad", "eagerness": "auto"}
        session = {"type": "transcription", "audio": {"input": {"turn_detection": td}}}
        await rec.send({"type": "session.update", "session": session})
        updated = await rec.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        # 200 ms of silence: only the model's "finished" can end the turn (auto waits 4 s).
        await append_audio(rec, question + silence(200))
        committed = await rec.until("input_audio_buffer.committed", timeout_s=10)
        completed = await rec.until("conversation.item.input_audio_transcription.completed")
        assert completed["item_id"] == committed["item_id"]
        assert not [e for e in rec.events if e["type"].startswith("response.")]
        rec.check()


async def test_speech_over_a_reply_cancels_it(mock_server: RunningServer, voice: PiperTts) -> None:
    client, update = await semantic_session(mock_server, "high")
    update["session"]["output_modalities"] = ["audio"]
    # The slowest pace the mock speaks at: the reply lasts long enough to be talked over,
    # however loaded the machine is.
    update["session"]["audio"]["output"] = {"speed": 0.25}
    question = silence(300) + spoken(voice, "Tell me a long story about a dragon.")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update)
        await rec.until("session.updated")
        await append_audio(rec, question + silence(200))
        created = await rec.until("response.created", timeout_s=10)
        await rec.until("response.output_audio.delta")
        await append_audio(rec, spoken(voice, "Wait, stop."))
        await rec.until("input_audio_buffer.speech_started")
        done = await rec.until("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        rec.check()
