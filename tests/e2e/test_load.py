"""``realtime-relay load`` against the mock server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import MOCK_ARGS
from tests.servers import RunningServer, relay_server
from tests.waiting import run_process


def load(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_process([sys.executable, "-m", "relay.cli", "load", "--url", url, *args], 120)


def test_audio_load_figures(mock_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = load(
        f"{mock_server.ws_base_url}/realtime",
        "--sessions",
        "3",
        "--turns",
        "2",
        "--ramp",
        "0.2",
        "--json",
        str(out),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(out.read_text())
    assert summary["turns"] == 6 and summary["failed_turns"] == 0
    assert summary["dropped_sessions"] == 0 and summary["error_rate"] == 0
    first_audio = summary["latency_ms"]["speech_end_to_first_audio"]
    assert first_audio["n"] == 6
    # The mock commits after the 500 ms silence window and answers 20 ms later.
    assert 450 < first_audio["p50"] < 3000
    assert first_audio["p50"] <= first_audio["p90"] <= first_audio["p99"] <= first_audio["max"]
    assert summary["latency_ms"]["commit_to_response_created"]["n"] == 6
    assert summary["events_per_second"] > 0
    assert "speech end to first audio" in run.stdout
    assert "events/s" in run.stderr  # live progress


def test_text_load(mock_server: RunningServer) -> None:
    run = load(f"{mock_server.ws_base_url}/realtime", "--sessions", "2", "--turns", "2", "--text")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "request to first delta" in run.stdout


def test_injected_errors_fail_the_run(tmp_path: Path) -> None:
    with relay_server(*MOCK_ARGS, "--mock-fault-error-after", "3") as server:
        out = tmp_path / "load.json"
        run = load(
            f"{server.ws_base_url}/realtime",
            "--sessions",
            "2",
            "--turns",
            "1",
            "--text",
            "--json",
            str(out),
        )
    assert run.returncode == 1, run.stdout + run.stderr
    summary = json.loads(out.read_text())
    assert summary["error_events"] == 2 and summary["error_rate"] > 0.01


def test_refused_sessions_are_dropped(tmp_path: Path) -> None:
    run = load("ws://127.0.0.1:9/v1/realtime", "--sessions", "2", "--turns", "1")
    assert run.returncode == 1
    assert "2 dropped sessions" in run.stdout


def test_locustfile_reuses_the_load_client(mock_server: RunningServer, tmp_path: Path) -> None:
    locustfile = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--host",
            f"{mock_server.ws_base_url}/realtime",
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "6s",
            "--only-summary",
            "--csv",
            str(tmp_path / "locust"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "REALTIME_TURNS": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    stats = (tmp_path / "locust_stats.csv").read_text().splitlines()
    row = next(line for line in stats if "speech end -> first audio delta" in line).split(",")
    assert int(row[2]) >= 2 and int(row[3]) == 0  # requests, failures


def test_webrtc_load(mock_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = load(
        f"{mock_server.ws_base_url}/realtime",
        "--transport",
        "webrtc",
        "--webrtc-host-addresses",  # as the relay's (bench/harness.py): loopback only
        "127.0.0.1",
        "--sessions",
        "2",
        "--turns",
        "1",
        "--json",
        str(out),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(out.read_text())
    assert summary["turns"] == 2 and summary["error_rate"] == 0
    first_audio = summary["latency_ms"]["speech_end_to_first_audio"]
    assert first_audio["n"] == 2 and first_audio["p50"] > 450  # after the silence window
