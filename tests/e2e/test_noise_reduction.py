"""``audio.input.noise_reduction`` through the official SDK against ``serve --backend mock``
(and the openai proxy) on loopback: "Noise reduction filters audio added to the input
audio buffer before it is sent to VAD and the model" (the openai SDK's NoiseReduction).

The audio is seeded pink noise and piper speech (``varied=False``), so every run sends
the same samples. What the server stored is read back with ``conversation.item.retrieve``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from models.audio import resample, rms
from models.stt import WhisperStt
from models.tts import PiperTts
from tests.e2e.client import Recorder, append_audio, pink
from tests.servers import RunningServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]

RATE = 24_000
LEAD_S = 1.0  # noise alone before the speech
TEXT = "I would like to book a table for two people."


@pytest.fixture(scope="module")
def whisper_stt() -> Iterator[WhisperStt]:
    yield WhisperStt()


def noisy_speech() -> bytes:
    """1 s of noise, then the sentence over the noise (about 12 dB SNR), then 0.5 s more."""
    voice = PiperTts(varied=False)
    speech = np.frombuffer(
        resample(voice.synthesize(TEXT), voice.sample_rate_hz, RATE), dtype="<i2"
    ).astype(np.float64)
    pad = np.zeros(int(RATE * LEAD_S))
    clean = np.concatenate((pad, speech, pad[: RATE // 2]))
    noise = np.frombuffer(pink(len(clean) / RATE, 1000.0, seed=21), dtype="<i2")
    return bytes(np.clip(clean + noise, -32768, 32767).astype("<i2").tobytes())


def update(noise_reduction: dict[str, Any] | None, turn_detection: Any = "keep") -> dict[str, Any]:
    audio_in: dict[str, Any] = {"noise_reduction": noise_reduction}
    if turn_detection != "keep":
        audio_in["turn_detection"] = turn_detection
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": audio_in},
        },
    }


async def stored_audio(rec: Recorder, pcm: bytes) -> bytes:
    """Append ``pcm``, commit it, and read back the user item's audio."""
    await append_audio(rec, pcm)
    await rec.send({"type": "input_audio_buffer.commit"})
    committed = await rec.until("input_audio_buffer.committed")
    await rec.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
    item = (await rec.until("conversation.item.retrieved"))["item"]
    return base64.b64decode(item["content"][0]["audio"])


def lead_drop_db(raw: bytes, stored: bytes) -> float:
    """How much quieter the noise-only lead is in ``stored`` (past the filter's start)."""
    part = slice(2 * RATE // 4, 2 * int(RATE * (LEAD_S - 0.05)))
    return float(20 * np.log10(rms(raw[part]) / max(1.0, rms(stored[part]))))


async def test_stored_audio_is_filtered_and_follows_session_updates(
    mock_server: RunningServer, whisper_stt: WhisperStt
) -> None:
    clip = noisy_speech()
    client = AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update({"type": "far_field"}, turn_detection=None))
        updated = await rec.until("session.updated")
        assert updated["session"]["audio"]["input"]["noise_reduction"]["type"] == "far_field"
        far = await stored_audio(rec, clip)
        assert len(far) == len(clip)
        assert lead_drop_db(clip, far) > 20
        # The speech survives in what the model (and transcription) gets: at most one
        # word off (exact on this machine; DeepFilterNet's float path may differ by CPU).
        heard = whisper_stt.transcribe(resample(far, RATE, 16_000)).text.split()
        said = TEXT.split()
        wrong = sum(a != b for a, b in zip(heard, said, strict=False))
        assert wrong + abs(len(heard) - len(said)) <= 1, heard

        await rec.send(update({"type": "near_field"}))
        await rec.until("session.updated")
        assert lead_drop_db(clip, await stored_audio(rec, clip)) > 20

        # strength 0.5 limits the attenuation to 6 dB (models/noise.py).
        await rec.send(update({"type": "near_field", "strength": 0.5}))
        await rec.until("session.updated")
        assert 3 < lead_drop_db(clip, await stored_audio(rec, clip)) < 7

        await rec.send(update(None))  # null: off, the next audio is stored as sent
        updated = await rec.until("session.updated")
        assert updated["session"]["audio"]["input"]["noise_reduction"] is None
        assert await stored_audio(rec, clip) == clip
        assert not rec.of_type("error")
        rec.check()


async def speech_starts(server: RunningServer, noise_reduction: dict[str, Any] | None) -> int:
    """``speech_started`` events that 5 s of pink noise alone sets off (server_vad)."""
    client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update(noise_reduction))
        await rec.until("session.updated")
        await append_audio(rec, pink(5.0, 1000.0, seed=1))
        # The VAD runs on each append before the next event is read: every start is in
        # before ``cleared``.
        await rec.send({"type": "input_audio_buffer.clear"})
        await rec.until("input_audio_buffer.cleared")
        return len(rec.of_type("input_audio_buffer.speech_started"))


@pytest.mark.parametrize("kind", ["near_field", "far_field"])
async def test_noise_reduction_stops_vad_false_starts(
    mock_server: RunningServer, kind: str
) -> None:
    assert await speech_starts(mock_server, None) > 0
    assert await speech_starts(mock_server, {"type": kind}) == 0


async def test_a_session_can_end_in_the_middle_of_filtering(mock_server: RunningServer) -> None:
    """The connection closes while DeepFilterNet is being built or run on a worker thread:
    the engine is freed only after the worker is out of it, and the server goes on."""
    client = AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url)
    for _ in range(3):
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await rec.send(update({"type": "far_field"}))
            await rec.until("session.updated")
            await append_audio(rec, pink(1.0, 1000.0, seed=2))
    assert await speech_starts(mock_server, None) > 0  # still serving


async def test_the_beta_name_filters_too(mock_server: RunningServer) -> None:
    """Beta ``input_audio_noise_reduction`` is the same setting."""
    client = AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url)
    client = client.with_options(websocket_base_url=mock_server.ws_base_url)
    starts = []
    for noise_reduction in (None, {"type": "near_field"}):
        async with client.beta.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn, beta=True)
            session = {"modalities": ["text"], "input_audio_noise_reduction": noise_reduction}
            await rec.send({"type": "session.update", "session": session})
            updated = await rec.until("session.updated")
            echoed = updated["session"]["input_audio_noise_reduction"]
            assert (echoed and echoed["type"]) == (noise_reduction and noise_reduction["type"])
            await append_audio(rec, pink(5.0, 1000.0, seed=1))
            await rec.send({"type": "input_audio_buffer.clear"})
            await rec.until("input_audio_buffer.cleared")
            starts.append(len(rec.of_type("input_audio_buffer.speech_started")))
            rec.check()
    assert starts[0] > 0 and starts[1] == 0


async def test_the_proxy_passes_noise_reduction_upstream(proxy: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-client", base_url=proxy.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(update({"type": "far_field", "strength": 0.4}))
        updated = await rec.until("session.updated")  # the upstream's echo
        nr = updated["session"]["audio"]["input"]["noise_reduction"]
        assert nr == {"type": "far_field", "strength": 0.4}
        rec.check()
