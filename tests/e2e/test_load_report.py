"""``realtime-relay load --report``: the HTML page of a run, and its chart helpers."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from loadgen.client import Figures
from loadgen.report import Timeline, histogram, line_chart
from tests.servers import RunningServer


class Page(HTMLParser):
    """What a report page holds: its tags, the SVG shapes, every URL an attribute names,
    and the text of its <pre>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.rects: list[dict[str, str]] = []
        self.pre = ""
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in values.items() if k in ("src", "href", "xlink:href")]
        if tag == "rect":
            self.rects.append(values)
        self._in_pre = tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.pre += data


def test_a_run_writes_a_self_contained_report(mock_server: RunningServer, tmp_path: Path) -> None:
    report, out = tmp_path / "report.html", tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, "-m", "relay.cli", "load", "--url", f"{mock_server.ws_base_url}/realtime"]
        + ["--sessions", "3", "--turns", "2", "--ramp", "0.5", "--json", str(out)]
        + ["--report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    text = report.read_text()
    page = Page()
    page.feed(text)
    summary = json.loads(out.read_text())
    # The table the command printed, as it printed it.
    assert page.pre.strip() == run.stdout.strip()
    # Histograms of each latency measured, and the four time series.
    assert page.tags.count("svg") == sum(1 for v in summary["raw_ms"].values() if v) + 4
    assert page.tags.count("polyline") >= 4
    assert "first audio latency (n=6" in text.lower().replace("speech end to ", "")
    # Nothing is fetched from anywhere: no URL in any attribute, no script.
    assert page.urls == [] and "script" not in page.tags
    assert not re.search(r"https?://(?!127\.0\.0\.1)", text)
    # The first-audio histogram's bars hold every measured turn.
    first = summary["raw_ms"]["speech_end_to_first_audio"]
    assert len(first) == 6 and sum(1 for r in page.rects[:30] if float(r["height"]) > 0) >= 1


def test_histogram_bins_hold_every_value_and_bars_scale() -> None:
    values = [10.0, 20.0, 20.0, 95.0]
    svg, counts = histogram("x", values, bins=10)
    assert sum(counts) == len(values) and counts[2] == 2 and counts[9] == 1
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert max(heights) == heights[2] == 2 * heights[1]  # bar 1 holds one, bar 2 two
    assert ">100 ms</text>" in svg  # the axis ends at a round number above the largest


def test_line_chart_breaks_at_missing_values() -> None:
    svg = line_chart("t", [0.0, 1.0, 2.0, 3.0], {"a": [1.0, math.nan, 2.0, 4.0]}, "ms")
    assert svg.count("<polyline") == 2
    assert 'text-anchor="end">5</text>' in svg  # the y axis: a round number above the largest


def test_the_timeline_is_sampled_and_windowed() -> None:
    timeline, figures = Timeline(), Figures()
    for second in range(1, 9):
        figures.active, figures.events = 2, second * 100
        figures.speech_end_to_first_audio_ms.append(100.0 * second)
        timeline.sample(figures, float(second))
    assert timeline.events_per_second() == [100.0] * 8
    p = timeline.first_audio_percentiles(figures.speech_end_to_first_audio_ms)
    # At the last sample, the window holds the latencies of the last 5 s: 400 ... 800.
    assert p["p50"][-1] == 600.0 and len(p["p90"]) == 8
