"""A real SIP phone calls the relay: Debian's baresip, a WAV file as its microphone and a
file as its speaker (the sndfile module dumps what it plays), against the mock backend.

The caller's question reaches the session whole (the mock transcribes a turn as its
length; seen on a sideband ``?call_id=``), the reply comes back as non-silent G.711, and
the phone hanging up (its WAV ends) ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from bench.voice import spoken
from models.audio import resample
from models.tts import PiperTts
from tests.e2e.client import silence, speech
from tests.e2e.conftest import MOCK_ARGS
from tests.servers import RunningServer, free_port, relay_server
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

QUESTION = "hello there how are you today"
TRANSCRIBED = {"audio": {"input": {"transcription": {"model": "whisper-1"}}}}
_CONN = re.compile(r"sip\.accepted conn=(\S+)")
_SECONDS = re.compile(r"(\d+\.\d) seconds of audio")


@pytest.fixture(scope="module")
def sip_server() -> Iterator[tuple[RunningServer, int]]:
    port = free_port()
    args = (*MOCK_ARGS, "--sip-listen", f"127.0.0.1:{port}")
    with relay_server(*args, "--sip-session", json.dumps(TRANSCRIBED)) as server:
        yield server, port


def _phone_config(directory: Path, microphone: Path) -> Path:
    """A baresip configuration: loopback only, G.711, WAV in, sndfile dumps out."""
    config = directory / "baresip"
    config.mkdir()
    (config / "config").write_text(
        "\n".join(
            [
                "poll_method poll",
                "sip_listen 127.0.0.1:0",  # a port the kernel picks: no other socket's
                "net_interface 127.0.0.1",
                f"audio_source aufile,{microphone}",
                "audio_player aubridge,speaker",
                "audio_alert aubridge,speaker",
                "module_path /usr/lib/baresip/modules",
                "module g711.so",
                "module aufile.so",
                "module aubridge.so",
                "module sndfile.so",
                f"snd_path {directory}",
                "module_app account.so",
                "module_app menu.so",
                "",
            ]
        )
    )
    (config / "accounts").write_text("<sip:caller@127.0.0.1>;regint=0;audio_codecs=PCMU\n")
    (config / "contacts").write_text("")
    return config


def _write_wav(path: Path, pcm16_24k: bytes) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(resample(pcm16_24k, 24000, 8000))


def _played(directory: Path) -> Path:
    """The file the sndfile module dumped the phone's decoded (heard) audio to."""
    played = sorted(directory.glob("dump-*-dec.wav"))
    assert played, "baresip dumped no audio"
    return played[-1]


def _loudest_rms(path: Path) -> float:
    """The loudest 100 ms of a WAV file (RMS of 16-bit samples)."""
    with wave.open(str(path)) as heard:
        rate = heard.getframerate()
        samples = np.frombuffer(heard.readframes(heard.getnframes()), dtype="<i2")
    step = rate // 10
    windows = [samples[i : i + step].astype(np.float64) for i in range(0, len(samples), step)]
    return max((float(np.sqrt(np.mean(w**2))) for w in windows if len(w)), default=0.0)


async def _call(config: Path, uri: str, timeout_s: float, lines: list[str]) -> None:
    """Run baresip until its call ends (then stop it); its output goes to ``lines``."""
    phone = await asyncio.create_subprocess_exec(
        "baresip",
        "-f",
        str(config),
        "-e",
        f"/dial {uri}",
        "-t",
        str(int(timeout_s) + 15),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert phone.stdout is not None
    try:
        async with asyncio.timeout(timeout_s):
            async for raw in phone.stdout:
                lines.append(raw.decode(errors="replace").strip())
                if "Call with" in lines[-1] and "terminated" in lines[-1]:
                    return
        raise AssertionError("baresip ended without a call:\n" + "\n".join(lines[-30:]))
    finally:
        with contextlib.suppress(ProcessLookupError):
            phone.terminate()
        async with asyncio.timeout(10):
            await phone.wait()


async def _phone_call(
    server: RunningServer,
    uri: str,
    directory: Path,
    microphone: bytes,
    timeout_s: float,
    hang_up_at: str | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """baresip calls ``uri`` speaking ``microphone`` (PCM16 24 kHz), and hangs up at its
    end, unless the app hangs up first, at the sideband's first ``hang_up_at`` event; the
    call id, and the events a sideband saw. Returns once the session closed."""
    wav = directory / "microphone.wav"
    _write_wav(wav, microphone)
    before = len(server.lines)
    said: list[str] = []
    phone = asyncio.create_task(_call(_phone_config(directory, wav), uri, timeout_s, said))

    def accepted() -> str | None:
        found = [m.group(1) for line in server.lines[before:] if (m := _CONN.search(line))]
        return found[-1] if found else None

    # Accepted, or baresip gone without a call (it could not start, say): no waiting on
    # after that, and both sides' output in the error.
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: accepted() or phone.done(), timeout_s=15, what="a call")
    call_id = accepted()
    if call_id is None:
        phone.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await phone
        relay, phone_said = server.lines[before:][-30:], said[-30:]
        raise AssertionError(
            "\n".join(["no call accepted; baresip:", *phone_said, "relay:", *relay])
        )
    events: list[dict[str, Any]] = []
    async with connect(f"{server.ws_base_url}/realtime?call_id={call_id}") as side:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async for frame in side:  # until the call ends
                    events.append(json.loads(frame))
                    if events[-1]["type"] == hang_up_at:
                        async with httpx.AsyncClient(base_url=server.base_url) as http:
                            reply = await http.post(
                                f"/realtime/calls/{call_id}/hangup",
                                headers={"Authorization": "Bearer sk-test"},
                            )
                            assert reply.status_code == 200, reply.text
    await phone
    await eventually(
        lambda: any(f"session.closed conn={call_id}" in line for line in server.lines),
        timeout_s=10,
        what="the session closed",
    )
    return call_id, events


def _transcripts(events: list[dict[str, Any]]) -> list[str]:
    kind = "conversation.item.input_audio_transcription.completed"
    return [str(e.get("transcript", "")) for e in events if e["type"] == kind]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_calls_the_relay(
    sip_server: tuple[RunningServer, int], tmp_path: Path, transport: str
) -> None:
    server, port = sip_server
    uri = f"sip:agent@127.0.0.1:{port};transport={transport}"
    # Silence first (time for the sideband to attach), the question, then silence while
    # the reply plays; at the file's end baresip hangs up.
    microphone = silence(2500) + speech(QUESTION) + silence(7000)
    call_id, events = await _phone_call(server, uri, tmp_path, microphone, 40)
    kinds = [e["type"] for e in events]
    # The mock transcribes a turn as its length: the question (1.9 s) and VAD's padding.
    heard = [float(m.group(1)) for t in _transcripts(events) if (m := _SECONDS.fullmatch(t))]
    assert heard and 1.9 <= heard[0] <= 4.0, kinds
    assert "output_audio_buffer.started" in kinds and "response.done" in kinds
    assert "response.output_audio.delta" not in kinds  # audio goes over RTP
    # What the phone played: the reply, not silence.
    assert _loudest_rms(_played(tmp_path)) > 500
    # The phone hung up, and the session ended with the call.
    assert any(f"sip.bye conn={call_id} by=caller" in line for line in server.lines)
    invite = f"sip.invite conn={call_id} transport={transport.upper()}"
    assert any(invite in line for line in server.lines)


@pytest.mark.models
async def test_baresip_asks_the_local_pipeline(tmp_path: Path) -> None:
    """The bundled models: whisper hears the question over G.711, piper's reply is heard."""
    port = free_port()
    args = ("--backend", "local", "--llm-max-tokens", "40", "--sip-listen", f"127.0.0.1:{port}")
    with relay_server(*args, "--sip-session", json.dumps(TRANSCRIBED)) as server:
        question = spoken(PiperTts(varied=False), "What is the capital of France?")
        # The phone keeps listening (a long silence) until the reply has played, then the
        # app hangs up: a slow machine gets the time it needs, a fast one ends early.
        microphone = silence(2500) + question + silence(120_000)
        uri = f"sip:agent@127.0.0.1:{port}"
        stopped = "output_audio_buffer.stopped"
        _, events = await _phone_call(server, uri, tmp_path, microphone, 120, stopped)
    transcripts = _transcripts(events)
    assert transcripts and {"capital", "france"} <= set(
        re.findall(r"[a-z']+", transcripts[0].lower())
    ), transcripts
    kinds = [e["type"] for e in events]
    assert "response.done" in kinds and stopped in kinds, kinds
    assert _loudest_rms(_played(tmp_path)) > 500
