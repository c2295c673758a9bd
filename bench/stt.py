"""Whisper short-window encoding versus the fixed 30 s window, on the voice questions."""

from __future__ import annotations

import time

from bench.stats import machine, percentile, write_section
from bench.voice import QUESTIONS, spoken
from models.audio import resample
from models.stt import WhisperStt
from models.tts import PiperTts


def main() -> str:
    tts = PiperTts()
    clips = [resample(spoken(tts, q), 24000, 16000) for q in QUESTIONS]
    stt = WhisperStt()
    rows = [
        "| window | p50 ms | p90 ms | transcripts equal to the full window's |",
        "|---|---:|---:|---:|",
    ]
    texts: dict[bool, list[str]] = {}
    for short in (False, True):
        stt.short_window = short
        stt.transcribe(clips[0])  # warm
        times, texts[short] = [], []
        for clip in clips:
            started = time.perf_counter()
            texts[short].append(stt.transcribe(clip).text)
            times.append((time.perf_counter() - started) * 1000)
        same = sum(
            a.lower().strip(".?! ") == b.lower().strip(".?! ")
            for a, b in zip(texts[short], texts[False], strict=True)
        )
        name = "short (max(10 s, audio + 1 s))" if short else "full (30 s)"
        rows.append(
            f"| {name} | {percentile(times, 50):.0f} | {percentile(times, 90):.0f} "
            f"| {same}/{len(clips)} |"
        )
        print(rows[-1], flush=True)
    body = (
        f"{machine()}\n\nCommand: `python -m bench stt`. Bundled tiny.en (int8), the "
        f"{len(QUESTIONS)} spoken questions of the voice benchmark.\n\n" + "\n".join(rows)
    )
    write_section("Whisper encoding window", body)
    return body


if __name__ == "__main__":
    main()
