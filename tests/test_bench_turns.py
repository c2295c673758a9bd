"""The labeled turn set of ``python -m bench turns`` (bench/turns/utterances.json): it
loads, and has the counts and labels the benchmark needs. No audio is made here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.turns.labeled import (
    COMPLETE_LABELS,
    NOISE_LABELS,
    PAUSE_LABELS,
    PAUSE_RANGE_MS,
    SET_PATH,
    load,
)


def test_the_set_has_the_required_counts_and_labels() -> None:
    turns = load()
    assert len(turns.complete) >= 30
    assert set(Counter(c.label for c in turns.complete)) == set(COMPLETE_LABELS)
    assert len(turns.paused) >= 30
    assert set(Counter(p.label for p in turns.paused)) == set(PAUSE_LABELS)
    low, high = PAUSE_RANGE_MS
    assert all(low <= p.pause_ms <= high for p in turns.paused)
    assert (
        min(p.pause_ms for p in turns.paused) <= 500 < 1300 <= max(p.pause_ms for p in turns.paused)
    )
    assert len(turns.noise) >= 10
    assert set(n.label for n in turns.noise) <= set(NOISE_LABELS)
    assert turns.noisy_snr_db == pytest.approx(10, abs=2)
    # Speed varies.
    assert len({x.length_scale for x in (*turns.complete, *turns.paused)}) >= 3


def test_fillers_and_dictation_are_in_the_set() -> None:
    texts = [p.cut_after.lower() for p in load().paused]
    assert any(t.endswith("um,") for t in texts) and any(t.endswith("uh,") for t in texts)
    assert any(t.endswith(" and") for t in texts) and any(t.endswith(" with") for t in texts)
    assert any(t.endswith(" to") for t in texts) and any(t.endswith(" is") for t in texts)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["paused"][0].update(pause_ms=2000), "pause"),
        (lambda d: d["paused"][0].update(cut_after="Something else"), "prefix"),
        (lambda d: d["paused"][0].update(cut_after=d["paused"][0]["text"]), "prefix"),
        (lambda d: d["complete"][0].update(label="command"), "label"),
        (lambda d: d["complete"][0].update(text="Turn off the"), "complete turn"),
        (lambda d: d["noise"][0].update(label="rain"), "label"),
        (lambda d: d["noise"][1].update(id=d["noise"][0]["id"]), "unique"),
    ],
)
def test_a_bad_entry_is_refused(change: object, message: str, tmp_path: Path) -> None:
    data = json.loads(SET_PATH.read_text())
    change(data)  # type: ignore[operator]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load(path)


def test_quiet_spans_finds_the_pauses_inside_speech() -> None:
    """bench turn-model's pauses inside the words: runs of quiet 10 ms frames, at least
    the minimum long, inside the window asked for."""
    import numpy as np

    from bench.turns.audio import RATE, quiet_spans, silence

    def tone(ms: float) -> bytes:
        t = np.arange(int(RATE * ms / 1000)) / RATE
        return (8000 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()

    pcm = silence(300) + tone(500) + silence(250) + tone(400) + silence(100) + tone(300)
    assert quiet_spans(pcm, 150, start_ms=300) == [(800.0, 250.0)]
    assert quiet_spans(pcm, 100, start_ms=300) == [(800.0, 250.0), (1450.0, 100.0)]
    assert quiet_spans(pcm, 150) == [(0.0, 300.0), (800.0, 250.0)]
    # A window's end cuts a pause short: what lies past it is not looked at.
    assert quiet_spans(pcm, 150, start_ms=300, end_ms=900) == []
    assert quiet_spans(pcm, 100, start_ms=300, end_ms=900) == [(800.0, 100.0)]
