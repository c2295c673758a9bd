"""``python -m bench vad``: the server VAD's frame classifiers on the labeled turn set.

For webrtcvad (models/vad.py ``WebRtcFrames``) and Silero (models/silero.py), each behind
the same ``ServerVad`` state machine at the default ``server_vad`` settings (threshold 0.5,
500 ms of silence), on every clip of ``bench/turns/`` (piper speech, a noisy copy of each at
about 10 dB SNR, noise-only clips), fed 20 ms at a time as the transceiver feeds it:

- noise-only clips where speech starts (a false start: the session would commit noise);
- clips whose turn ends at all (``speech_stopped``), clean and noisy: under noise a VAD that
  hears the noise as speech never ends the turn;
- end of speech -> ``speech_stopped`` p50 on clean complete utterances;
- mid-sentence pauses (400-1500 ms) cut off, clean;
- CPU microseconds per 20 ms frame (``time.process_time``, the whole clip).

About a minute; needs the models ``scripts/fetch-smart-turn`` installs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.stats import machine, percentile, write_section
from bench.turns.audio import Clip, Speech
from bench.turns.labeled import load
from bench.turns.noise import build
from models.audio import to_pcm16
from models.silero import SileroFrames, SileroModel
from models.vad import (
    VAD_RATE_HZ,
    FrameClassifier,
    ServerVad,
    SpeechStarted,
    SpeechStopped,
    WebRtcFrames,
)

THRESHOLD = 0.5
SILENCE_MS = 500


@dataclass
class Tally:
    false_starts: int = 0
    noise_clips: int = 0
    ended: dict[str, list[bool]] = field(default_factory=dict)  # "clean"/"noisy" -> per clip
    stop_ms: list[float] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)
    cpu_s: float = 0.0
    frames: int = 0


def run(clip: Clip, classifier: FrameClassifier, tally: Tally) -> None:
    vad = ServerVad(threshold=THRESHOLD, silence_duration_ms=SILENCE_MS, classifier=classifier)
    pcm = to_pcm16(clip.pcm, "audio/pcm", VAD_RATE_HZ)
    started = time.process_time()
    events = vad.feed(pcm, 0.0)
    tally.cpu_s += time.process_time() - started
    tally.frames += len(pcm) // 320
    stops = [e.audio_end_ms for e in events if isinstance(e, SpeechStopped)]
    if clip.kind == "noise":
        tally.noise_clips += 1
        tally.false_starts += any(isinstance(e, SpeechStarted) for e in events)
        return
    tally.ended.setdefault("noisy" if clip.noisy else "clean", []).append(bool(stops))
    if clip.noisy:
        return
    if clip.kind == "complete" and stops and clip.speech_end_ms is not None:
        # The silence window runs from the end of the last voiced frame: stop time is
        # when speech_stopped would be sent, the window after the detected end.
        tally.stop_ms.append(stops[-1] + SILENCE_MS - clip.speech_end_ms)
    if clip.kind == "paused" and clip.pause_start_ms is not None and clip.resume_ms is not None:
        pause = (clip.pause_start_ms, clip.resume_ms)
        tally.cut.append(any(pause[0] - 40 <= s <= pause[1] for s in stops))


def measure(clips: list[Clip], make: Callable[[], FrameClassifier]) -> Tally:
    tally = Tally()
    for clip in clips:
        run(clip, make(), tally)
    return tally


def row(name: str, t: Tally) -> str:
    def share(values: list[bool]) -> str:
        return f"{sum(values)} of {len(values)}"

    stop = f"{percentile(t.stop_ms, 50):.0f} ms" if t.stop_ms else "-"
    return (
        f"| {name} | {t.false_starts} of {t.noise_clips} | {share(t.ended.get('clean', []))} "
        f"| {share(t.ended.get('noisy', []))} | {stop} | {share(t.cut)} "
        f"| {t.cpu_s / max(t.frames, 1) * 1e6:.0f} us |"
    )


def main() -> str:
    clips = build(load(), Speech())
    model = SileroModel()
    webrtc = measure(clips, lambda: WebRtcFrames(THRESHOLD))
    silero = measure(clips, lambda: SileroFrames(model, THRESHOLD))
    body = "\n".join(
        [
            f"`python -m bench vad` on {machine()}: `server_vad` (threshold {THRESHOLD}, "
            f"{SILENCE_MS} ms) over the turn set, 20 ms frames.",
            "",
            "| classifier | noise-only clips that start speech | clean turns that end "
            "| noisy turns (10 dB SNR) that end | end of speech -> speech_stopped p50 "
            "| mid-sentence pauses cut | CPU per 20 ms frame |",
            "|---|---:|---:|---:|---:|---:|---:|",
            row("webrtcvad (+ energy floor)", webrtc),
            row("Silero VAD v5 gating webrtcvad (onnxruntime, 1 thread)", silero),
        ]
    )
    print(body)
    write_section("Server VAD frame classifiers", body)
    return body
