"""``python -m bench [NAME ...]``: run the benchmarks and write bench/results.md."""

from __future__ import annotations

import sys

from bench import (
    append,
    capacity,
    first_audio,
    frames,
    noise,
    overhead,
    proxy_turns,
    resample,
    soak,
    stt,
    turn_model,
    turns,
    vad,
    voice,
)

BENCHES = {
    "relay": overhead.main,
    "stt": stt.main,
    "voice": voice.main,
    "resample": resample.main,
    "soak": soak.main,
    "turn-model": turn_model.main,
    "turns": turns.main,
    "proxy-turns": proxy_turns.main,
    "capacity": capacity.main,
    "frames": frames.main,
    "append": append.main,
    "first-audio": first_audio.main,
    "vad": vad.main,
    "noise": noise.main,
}


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        BENCHES[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
