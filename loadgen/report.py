"""``realtime-relay load --report report.html``: one self-contained HTML page of a run.

The run is sampled once a second (:class:`Timeline`: sessions open, events, problems, and
how many first-audio latencies had arrived), and the page draws it with inline SVG built
here: no script, no stylesheet or font from elsewhere, so it opens offline and can be
attached to a ticket. Latency histograms come from the summary's raw figures, and the
summary table is the one the command prints.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadgen.client import Figures, format_summary

MAX_SAMPLES = 24 * 3600  # one a second: a day's run
WIDTH, HEIGHT, PAD = 720, 220, 44
WINDOW_S = 5  # first audio percentiles over the last 5 s of samples
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700")


@dataclass
class Timeline:
    """Per-second samples of a run, bounded (``MAX_SAMPLES``)."""

    seconds: list[float] = field(default_factory=list)
    active: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    problems: list[int] = field(default_factory=list)
    latencies_seen: list[int] = field(default_factory=list)  # first-audio figures so far

    def sample(self, figures: Figures, elapsed_s: float) -> None:
        if len(self.seconds) >= MAX_SAMPLES:
            return
        self.seconds.append(round(elapsed_s, 2))
        self.active.append(figures.active)
        self.events.append(figures.events)
        self.problems.append(figures.failed_turns + figures.error_events + figures.dropped_sessions)
        self.latencies_seen.append(len(figures.speech_end_to_first_audio_ms))

    def events_per_second(self) -> list[float]:
        rates, previous, last_t = [], 0, 0.0
        for t, count in zip(self.seconds, self.events, strict=True):
            rates.append((count - previous) / max(t - last_t, 1e-6))
            previous, last_t = count, t
        return rates

    def first_audio_percentiles(self, latencies: list[float]) -> dict[str, list[float]]:
        """p50 and p90 of the first-audio latencies that arrived in the last ``WINDOW_S``
        samples, at each sample (NaN where none arrived)."""
        p50, p90 = [], []
        for i, seen in enumerate(self.latencies_seen):
            start = self.latencies_seen[max(0, i - WINDOW_S)] if i >= WINDOW_S else 0
            window = latencies[start:seen]
            p50.append(float(np.percentile(window, 50)) if window else math.nan)
            p90.append(float(np.percentile(window, 90)) if window else math.nan)
        return {"p50": p50, "p90": p90}


def _scale(values: list[float], low: float, high: float, size: float) -> list[float]:
    span = (high - low) or 1.0
    return [(v - low) / span * size for v in values]


def _frame(title: str, x_label: str, y_max: float, x_max: float, body: str) -> str:
    """An SVG chart: axes with their largest values, a title, and ``body`` inside."""
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    return (
        f'<svg width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<text x="{PAD}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>'
        f'<line x1="{PAD}" y1="{PAD + h}" x2="{PAD + w}" y2="{PAD + h}" stroke="#555"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{PAD + h}" stroke="#555"/>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="11" text-anchor="end">{y_max:g}</text>'
        f'<text x="{PAD - 4}" y="{PAD + h}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{PAD + w}" y="{PAD + h + 16}" font-size="11" text-anchor="end">'
        f"{x_max:g} {html.escape(x_label)}</text>"
        f'<g transform="translate({PAD},{PAD})">{body}</g></svg>'
    )


def line_chart(
    title: str, xs: list[float], series: dict[str, list[float]], unit: str, x_label: str = "s"
) -> str:
    """Lines over ``xs`` (time by default); NaN values break a line."""
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    finite = [v for ys in series.values() for v in ys if not math.isnan(v)]
    y_max = float(_nice(max(finite, default=1.0)))
    x_max = max(xs, default=1.0) or 1.0
    px = _scale(xs, 0.0, x_max, w)
    body, legend = [], []
    for index, (name, ys) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for x, y in zip(px, ys, strict=True):
            if math.isnan(y):
                runs.append([])
                continue
            runs[-1].append(f"{x:.1f},{h - y / y_max * h:.1f}")
        for points in (r for r in runs if r):
            body.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{" ".join(points)}"/>'
            )
        legend.append(
            f'<text x="{w - 4}" y="{12 + 14 * index}" font-size="11" fill="{colour}" '
            f'text-anchor="end">{html.escape(name)}</text>'
        )
    label = f"{title} ({unit})" if unit else title
    return _frame(label, x_label, y_max, round(x_max, 1), "".join(body + legend))


def histogram(title: str, values: list[float], bins: int = 30) -> tuple[str, list[int]]:
    """Bars of ``values`` in ``bins`` equal bins from 0 to the largest; the SVG and the
    count in each bin."""
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    top = float(_nice(max(values, default=1.0)))
    counts = [int(c) for c in np.histogram(values, bins=bins, range=(0.0, top))[0]]
    tallest = max(counts, default=0) or 1
    width = w / bins
    bars = "".join(
        f'<rect x="{i * width:.1f}" y="{h - c / tallest * h:.1f}" width="{width - 1:.1f}" '
        f'height="{c / tallest * h:.1f}" fill="{COLOURS[0]}"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return _frame(f"{title} (n={len(values)}, bars: turns)", "ms", tallest, top, bars), counts


def _nice(value: float) -> float:
    """A round number at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0 or math.isnan(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= value))


def render(summary: dict[str, Any], timeline: Timeline) -> str:
    """The report page: the summary table, latency histograms and the time series."""
    raw = summary["raw_ms"]
    first_audio = raw["speech_end_to_first_audio"]
    charts = [
        histogram(name.replace("_", " ") + " latency", values)[0]
        for name, values in raw.items()
        if values
    ]
    xs = timeline.seconds
    percentiles = timeline.first_audio_percentiles(first_audio)
    charts += [
        line_chart("Sessions open", xs, {"active": [float(a) for a in timeline.active]}, ""),
        line_chart("Events", xs, {"events/s": timeline.events_per_second()}, "per second"),
        line_chart(f"First audio over the last {WINDOW_S} s", xs, percentiles, "ms"),
        line_chart(
            "Problems (failed turns, error events, dropped sessions)",
            xs,
            {"so far": [float(p) for p in timeline.problems]},
            "",
        ),
    ]
    table = f"<pre>{html.escape(format_summary(summary))}</pre>"
    return page(f"Load report: {summary['sessions']} sessions, {summary['url']}", charts, table)


def page(title: str, charts: list[str], preamble: str = "") -> str:
    """A self-contained page of ``charts`` (SVG strings) under ``title``."""
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    heading = html.escape(title)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{heading}</title><style>body{{font-family:sans-serif;margin:2em;}}"
        "pre{background:#f6f8fa;padding:1em;}figure{margin:1em 0;}</style></head>"
        f"<body><h1>{heading}</h1>{preamble}{figures}</body></html>\n"
    )


def write_report(path: str, summary: dict[str, Any], timeline: Timeline) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(summary, timeline))
