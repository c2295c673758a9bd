"""The labeled turn set (bench/turns/utterances.json): loading and checking, no audio."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SET_PATH = Path(__file__).with_name("utterances.json")
COMPLETE_LABELS = ("question", "statement")
PAUSE_LABELS = ("and", "with", "to", "is", "filler", "list", "phone")
NOISE_LABELS = ("white", "pink", "brown", "speech_shaped", "hum", "babble")
PAUSE_RANGE_MS = (400, 1500)
LENGTH_SCALES = (0.5, 2.0)


@dataclass(frozen=True)
class Complete:
    id: str
    label: str
    text: str
    length_scale: float


@dataclass(frozen=True)
class Paused:
    id: str
    label: str
    text: str
    cut_after: str
    pause_ms: int
    length_scale: float


@dataclass(frozen=True)
class Noise:
    id: str
    label: str
    level_db: float
    seconds: float


@dataclass(frozen=True)
class TurnSet:
    complete: list[Complete]
    paused: list[Paused]
    noise: list[Noise]
    noisy_snr_db: float
    noise_seed: int


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{SET_PATH.name}: {message}")


def _complete(raw: dict[str, Any]) -> Complete:
    item = Complete(raw["id"], raw["label"], raw["text"], float(raw["length_scale"]))
    _check(item.label in COMPLETE_LABELS, f"{item.id}: label {item.label!r}")
    _check(item.text.rstrip()[-1:] in ".?!", f"{item.id}: a complete turn ends in . ? or !")
    return item


def _paused(raw: dict[str, Any]) -> Paused:
    item = Paused(
        raw["id"],
        raw["label"],
        raw["text"],
        raw["cut_after"],
        int(raw["pause_ms"]),
        float(raw["length_scale"]),
    )
    _check(item.label in PAUSE_LABELS, f"{item.id}: label {item.label!r}")
    low, high = PAUSE_RANGE_MS
    _check(low <= item.pause_ms <= high, f"{item.id}: pause {item.pause_ms} ms")
    prefix, full = _words(item.cut_after), _words(item.text)
    _check(
        0 < len(prefix) < len(full) and full[: len(prefix)] == prefix,
        f"{item.id}: cut_after must be a strict prefix of text, word for word",
    )
    return item


def _noise(raw: dict[str, Any]) -> Noise:
    item = Noise(raw["id"], raw["label"], float(raw["level_db"]), float(raw["seconds"]))
    _check(item.label in NOISE_LABELS, f"{item.id}: label {item.label!r}")
    _check(0 < item.seconds <= 10, f"{item.id}: seconds {item.seconds}")
    return item


def load(path: Path = SET_PATH) -> TurnSet:
    """The set, checked: labels known, pauses in range, cuts at word boundaries, ids unique."""
    raw = json.loads(path.read_text())
    turns = TurnSet(
        complete=[_complete(x) for x in raw["complete"]],
        paused=[_paused(x) for x in raw["paused"]],
        noise=[_noise(x) for x in raw["noise"]],
        noisy_snr_db=float(raw["noisy_snr_db"]),
        noise_seed=int(raw["noise_seed"]),
    )
    items: list[Complete | Paused | Noise] = [*turns.complete, *turns.paused, *turns.noise]
    ids = [x.id for x in items]
    _check(len(ids) == len(set(ids)), "ids must be unique")
    spoken: list[Complete | Paused] = [*turns.complete, *turns.paused]
    for item in spoken:
        low, high = LENGTH_SCALES
        _check(low <= item.length_scale <= high, f"{item.id}: length_scale")
    return turns
