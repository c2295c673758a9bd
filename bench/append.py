"""``python -m bench append``: the transceiver's CPU per ``input_audio_buffer.append``, in
process.

``python -m bench frames`` measures whole processes under load; this isolates the part of
each frame that is the session's own work, without sockets: the sans-I/O core parses the
frame (JSON, base64) and buffers the audio, and the shell's server VAD resamples it to
8 kHz and classifies it (models/vad.py), for 20 ms frames of 24 kHz PCM16 noise at speech
level, turn detection on (``server_vad``), events drained after each frame as the runner
does. CPU time (``time.process_time``) is steadier than wall time on a shared machine;
the figure is the best of ``ROUNDS`` rounds.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np

from bench.stats import machine, write_section
from models.audio import to_pcm16
from models.vad import VAD_RATE_HZ, ServerVad
from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec
from transceiver.protocol.effects import FeedVad
from transceiver.protocol.session import RealtimeSession

FRAMES = 20_000
ROUNDS = 3
FRAME_MS = 20


def frame_json() -> str:
    """One 20 ms append of speech-level noise (24 kHz PCM16), as a client sends it."""
    samples = np.random.default_rng(0).standard_normal(24 * FRAME_MS) * 3000
    audio = base64.b64encode(samples.astype("<i2").tobytes()).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


def one_round(frame: str) -> float:
    """CPU microseconds per append for ``FRAMES`` appends through a fresh session."""
    spec = SessionSpec(kind=SessionKind.REALTIME, model=None, dialect=Dialect.GA)
    session = RealtimeSession(spec, now_ms=0.0)
    vad = ServerVad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    session.events_to_send()
    started = time.process_time()
    for i in range(FRAMES):
        session.receive_client_event(frame, i * FRAME_MS)
        for effect in session.effects():
            if isinstance(effect, FeedVad):
                pcm = to_pcm16(effect.audio, effect.audio_format, VAD_RATE_HZ)
                vad.feed(pcm, effect.start_ms)
        session.events_to_send()
    return (time.process_time() - started) / FRAMES * 1e6


def main() -> None:
    frame = frame_json()
    best = min(one_round(frame) for _ in range(ROUNDS))
    print(f"append: {best:.1f} us of CPU per 20 ms frame (core + server VAD)")
    write_section(
        "Append path (in process)",
        f"`python -m bench append` on {machine()}: the transceiver's own CPU per 20 ms "
        f"`input_audio_buffer.append` (parse, buffer, resample to 8 kHz, VAD; no sockets), "
        f"best of {ROUNDS} rounds of {FRAMES:,} frames: **{best:.1f} us**.",
    )
