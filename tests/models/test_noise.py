"""Input noise reduction (models/noise.py) with the bundled engines: RNNoise (near_field)
and DeepFilterNet3 (far_field), streamed in 20 ms chunks as the runner feeds them."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import models.noise
from models.audio import pcm16_to_array, resample, rms, ulaw_decode, ulaw_encode
from models.noise import InputNoiseFilter, NoiseError, NoiseType, Suppressor, max_attenuation_db
from models.stt import WhisperStt
from models.tts import PiperTts
from tests.e2e.client import pink
from tests.transceiver.test_speculation import Client, ScriptedBackend
from tests.waiting import eventually
from transceiver.protocol.contract import SessionSpec
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner

pytestmark = pytest.mark.models

RATE = 24_000
CHUNK = RATE // 50 * 2  # 20 ms of PCM16
KINDS: tuple[NoiseType, ...] = ("near_field", "far_field")
DELAY = RATE // 100 + 1  # samples: the filter's 10 ms and one


def streamed(
    pcm: bytes,
    kind: NoiseType,
    strength: float | None = None,
    chunk: int = CHUNK,
    fmt: str = "audio/pcm",
) -> bytes:
    engine = InputNoiseFilter()
    out = b"".join(
        engine.filter(pcm[i : i + chunk], fmt, kind, strength) for i in range(0, len(pcm), chunk)
    )
    engine.close()
    return out


def tail(pcm: bytes, seconds: float) -> bytes:
    """The last ``seconds``: past the engines' adaptation at the start."""
    return pcm[-2 * int(RATE * seconds) :]


@pytest.mark.parametrize("kind", KINDS)
def test_noise_energy_goes_down_on_noise_only_audio(kind: NoiseType) -> None:
    noise = pink(3.0, 1000.0)  # about -30 dBFS
    out = streamed(noise, kind)
    assert len(out) == len(noise)
    drop_db = 20 * np.log10(rms(tail(noise, 2.0)) / max(1.0, rms(tail(out, 2.0))))
    assert drop_db > 15, drop_db


@pytest.mark.parametrize("kind", KINDS)
def test_speech_survives(kind: NoiseType, piper_tts: PiperTts, whisper_stt: WhisperStt) -> None:
    text = "I would like to book a table for two people."
    speech = resample(piper_tts.synthesize(text), piper_tts.sample_rate_hz, RATE)
    padded = bytes(2 * RATE // 5) + speech + bytes(2 * RATE // 2)
    out = streamed(padded, kind)
    heard = whisper_stt.transcribe(resample(out, RATE, 16_000)).text
    assert heard.strip() == text
    # The speech keeps its level (within 3 dB), 10 ms and a sample later.
    ratio_db = 20 * np.log10(rms(out) / rms(padded))
    assert abs(ratio_db) < 3, ratio_db


@pytest.mark.parametrize("kind", KINDS)
def test_strength_limits_the_attenuation(kind: NoiseType) -> None:
    noise = pink(3.0, 1000.0, seed=11)
    drops = {}
    for strength in (0.0, 0.5, 1.0):
        out = tail(streamed(noise, kind, strength), 2.0)
        drops[strength] = 20 * np.log10(rms(tail(noise, 2.0)) / max(1.0, rms(out)))
    assert abs(drops[0.0]) < 1.0, drops  # no suppression at all
    assert 3.0 < drops[0.5] < 6.0 + 1.0, drops  # at most 6 dB
    assert drops[1.0] > drops[0.5] + 8, drops


def test_strength_zero_passes_the_audio_through_delayed() -> None:
    noise = pink(1.0, 3000.0, seed=3)
    out = pcm16_to_array(streamed(noise, "near_field", 0.0)).astype(np.float64)
    raw = pcm16_to_array(noise).astype(np.float64)
    # The input, delayed by the stream's 10 ms and a sample and RNNoise's 20 ms (its
    # output's lag, which the dry path matches; 722 samples is where the output best
    # matches the input); what differs is the resampling to 48 kHz and back (a low-pass).
    delay = 722
    error = out[delay + 100 :] - raw[100 : len(raw) - delay]
    assert np.sqrt(np.mean(error**2)) < 0.35 * np.sqrt(np.mean(raw**2))


def test_max_attenuation_db() -> None:
    assert max_attenuation_db(None) == max_attenuation_db(1.0) == max_attenuation_db(2.0)
    assert max_attenuation_db(0.0) == max_attenuation_db(-1.0) == 0.0
    assert max_attenuation_db(0.5) == pytest.approx(6.02, abs=0.01)
    assert max_attenuation_db(0.9) == pytest.approx(20.0)


@pytest.mark.parametrize("chunk", [2, 962, 4800, 30_002])
def test_any_chunking_keeps_the_length(chunk: int) -> None:
    noise = pink(0.5, 1000.0)
    assert len(streamed(noise, "near_field", chunk=chunk)) == len(noise)


def test_g711_is_filtered_in_its_own_format() -> None:
    noise = resample(pink(3.0, 1000.0, seed=5), RATE, 8_000)
    mulaw = ulaw_encode(noise)
    out = streamed(mulaw, "near_field", chunk=160, fmt="audio/pcmu")
    assert len(out) == len(mulaw)
    before, after = rms(ulaw_decode(mulaw)[-32_000:]), rms(ulaw_decode(out)[-32_000:])
    assert 20 * np.log10(before / max(1.0, after)) > 15


def test_reset_stream_restarts_it_and_state_stays_bounded() -> None:
    engine = InputNoiseFilter()
    chunk = pink(0.02, 1000.0)
    for _ in range(500):  # 10 s
        assert len(engine.filter(chunk, "audio/pcm", "near_field", None)) == CHUNK
    held = len(engine._ready) + len(engine._pending)  # white box: what one session keeps
    assert held < 1000
    # Audio went by unfiltered (noise_reduction was off): a fresh stream, the same
    # engine, starting with the 10 ms of silence again.
    engine.reset_stream()
    out = engine.filter(chunk, "audio/pcm", "near_field", None)
    assert out[: 2 * (DELAY - 1)] == bytes(2 * (DELAY - 1))
    engine.close()


def test_an_engine_that_cannot_load_refuses_appends_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def unavailable(kind: NoiseType, strength: float | None) -> Suppressor:
        calls.append(kind)
        raise NoiseError("cannot load DeepFilterNet: no such file")

    monkeypatch.setattr(models.noise, "suppressor_for", unavailable)
    asyncio.run(_refused_appends())
    assert calls == ["far_field"]  # tried once, not for every append


async def _refused_appends() -> None:
    backend, client = ScriptedBackend(), Client()
    session = RealtimeSession(SessionSpec(model="gpt-realtime"))
    runner = SessionRunner(session, backend, client.send, client.close)
    task = asyncio.create_task(runner.run(client.frames()))
    nr: dict[str, object] = {"type": "far_field"}
    for noise_reduction in (nr, None):
        audio_in = {"noise_reduction": noise_reduction, "turn_detection": None}
        update = {"type": "realtime", "audio": {"input": audio_in}}
        client.incoming.put_nowait(json.dumps({"type": "session.update", "session": update}))
        client.append(pink(0.1, 1000.0))
        client.incoming.put_nowait('{"type": "input_audio_buffer.commit"}')
    await eventually(
        lambda: any(e["type"] == "input_audio_buffer.committed" for e in client.events)
    )
    client.incoming.put_nowait(None)
    await task
    errors = [e["error"] for e in client.events if e["type"] == "error"]
    # Five appends refused, then the commit (nothing buffered); after null, all goes in.
    assert [e["code"] for e in errors] == ["noise_reduction_unavailable"] * 5 + [
        "input_audio_buffer_commit_empty"
    ]
    assert "no such file" in errors[0]["message"]
    assert errors[0]["param"] == "session.audio.input.noise_reduction"
