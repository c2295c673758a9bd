"""``python -m bench append``: the transceiver's CPU per ``input_audio_buffer.append``, in
process.

``python -m bench frames`` measures whole processes under load; this isolates the part of
each frame that is the session's own work, without sockets: the sans-I/O core parses the
frame (JSON, base64) and buffers the audio, and the shell's server VAD resamples it to
8 kHz and classifies it (models/vad.py), for 20 ms frames of 24 kHz PCM16 noise at speech
level, turn detection on (``server_vad``), events drained after each frame as the runner
does. CPU time (``time.process_time``) is steadier than wall time on a shared machine;
the figure is the best of ``ROUNDS`` rounds.

Then what each ``response.create`` costs in a long conversation: ``build_response`` (the
request a backend gets, every item with its audio) in a conversation of 20 minutes of turns
(1.5 s of user audio, 2 s of reply), the most audio a conversation holds by default.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np

from bench.stats import machine, write_section
from models.audio import to_pcm16
from models.vad import VAD_RATE_HZ, ServerVad
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import RealtimeSessionConfig
from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec
from transceiver.protocol.conversation import CONVERSATION_AUDIO_MAX_MS, Conversation
from transceiver.protocol.effects import FeedVad
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.requests import build_response
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


def long_conversation() -> Conversation:
    """Turns of 1.5 s of user audio and a 2 s reply, up to the default audio bound."""
    conversation = Conversation("conv_bench")
    pcm = AudioFormatType.PCM
    for n in range(int(CONVERSATION_AUDIO_MAX_MS // 3500)):
        user = {"id": f"item_u{n}", "type": "message", "role": "user", "content": []}
        conversation.add(user, audio=bytes(pcm.byte_count(1500)), audio_format=pcm)
        reply = {"id": f"item_a{n}", "type": "message", "role": "assistant", "content": []}
        conversation.add(reply, audio=b"", audio_format=pcm)
        conversation.append_audio(conversation.get(reply["id"]), bytes(pcm.byte_count(2000)))
    return conversation


def response_context_ms() -> float:
    """CPU milliseconds of one ``build_response`` in :func:`long_conversation`, best of 5."""
    conversation, config, ids = long_conversation(), RealtimeSessionConfig(), IdFactory()
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        build_response({}, config, conversation, ids)
        best = min(best, time.process_time() - started)
    return best * 1000


def main() -> None:
    frame = frame_json()
    best = min(one_round(frame) for _ in range(ROUNDS))
    print(f"append: {best:.1f} us of CPU per 20 ms frame (core + server VAD)")
    context_ms = response_context_ms()
    print(f"append: {context_ms:.2f} ms of CPU per response.create in a 20-minute conversation")
    write_section(
        "Append path (in process)",
        f"`python -m bench append` on {machine()}: the transceiver's own CPU per 20 ms "
        f"`input_audio_buffer.append` (parse, buffer, resample to 8 kHz, VAD; no sockets), "
        f"best of {ROUNDS} rounds of {FRAMES:,} frames: **{best:.1f} us**. A `response.create` "
        "in a conversation of 20 minutes of turns (the default audio bound; the request holds "
        f"every item with its audio): **{context_ms:.2f} ms** of CPU.",
    )
