"""``--vad silero`` through the official SDK on the local backend (and the mock's and the
proxy's speech detectors): in a noisy room a turn ends and noise alone starts none, where
webrtcvad (the default) hears speech throughout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from models.silero import SileroModel
from tests.e2e.client import Recorder, append_audio, silence
from tests.local.conftest import Speaker
from tests.servers import RunningServer, relay_server
from tests.transceiver.test_local_turns import feed, turns

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]

RATE = 24_000


@pytest.fixture(scope="module")
def silero_server() -> Iterator[RunningServer]:
    with relay_server("--backend", "local", "--vad", "silero", "--llm-max-tokens", "20") as s:
        yield s


def noisy(speech: bytes, trailing_s: float, snr_db: float = 10.0) -> bytes:
    """``speech`` then ``trailing_s`` of nothing, all under white noise ``snr_db`` below
    the speech."""
    clean = np.frombuffer(speech, dtype="<i2").astype(np.float64)
    level = float(np.sqrt(np.mean(clean[np.abs(clean) > 300] ** 2))) * 10 ** (-snr_db / 20)
    total = np.concatenate([np.zeros(RATE // 2), clean, np.zeros(int(trailing_s * RATE))])
    hiss = np.random.default_rng(7).standard_normal(total.size) * level
    return bytes(np.clip(total + hiss, -32768, 32767).astype("<i2").tobytes())


async def transcription_session(server: RunningServer, audio: bytes) -> Recorder:
    client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        session: dict[str, Any] = {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
        }
        await rec.send({"type": "session.update", "session": session})
        await rec.until("session.updated")
        await append_audio(rec, audio)
        await append_audio(rec, silence(100))  # a last frame, to see what the VAD made of it
        await rec.send({"type": "conversation.item.retrieve", "item_id": "none"})
        await rec.until("error")  # everything before it has been handled
        rec.check()
        return rec


async def test_a_turn_ends_in_noise(silero_server: RunningServer, speak: Speaker) -> None:
    audio = noisy(speak("Please book a table for two at eight tonight."), trailing_s=1.5)
    rec = await transcription_session(silero_server, audio)
    assert len(rec.of_type("input_audio_buffer.speech_started")) == 1
    assert len(rec.of_type("input_audio_buffer.committed")) == 1  # the noise did not hold it


async def test_noise_alone_starts_no_turn(silero_server: RunningServer) -> None:
    hiss = np.random.default_rng(3).standard_normal(4 * RATE) * 2000
    rec = await transcription_session(silero_server, hiss.astype("<i2").tobytes())
    assert rec.of_type("input_audio_buffer.speech_started") == []


@pytest.mark.parametrize("silero", [True, False])
async def test_the_mock_takes_vad_silero(speak: Speaker, silero: bool) -> None:
    # Client developers stream real voices to the mock too: with --vad silero its server
    # VAD ends a turn in noise as the local backend's does; with webrtcvad the noise holds
    # it open.
    audio = noisy(speak("Please book a table for two at eight tonight."), trailing_s=1.5)
    vad = ("--vad", "silero") if silero else ()
    with relay_server("--backend", "mock", *vad) as server:
        rec = await transcription_session(server, audio)
    assert len(rec.of_type("input_audio_buffer.committed")) == (1 if silero else 0)


@pytest.mark.parametrize("silero", [True, False])
async def test_the_proxys_local_turn_detection_takes_vad_silero(
    speak: Speaker, silero: bool
) -> None:
    # --backend openai --local-turn-detection --vad silero: the proxy's own speech detector
    # (transceiver/proxy/turns.py) classifies frames with Silero too, so a turn in noise
    # ends there; with webrtcvad alone the noise holds it open.
    audio = noisy(speak("Please book a table for two at eight tonight."), trailing_s=1.5)
    local, _ = turns(vad_model=SileroModel() if silero else None)
    client, upstream = feed(local, audio)
    assert [e["type"] for e in client][:1] == ["input_audio_buffer.speech_started"]
    stopped = [e for e in client if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(stopped) == (1 if silero else 0)
    commits = [f for f in upstream if f["type"] == "input_audio_buffer.commit"]
    assert len(commits) == (1 if silero else 0)
    local.close()
