"""A bad option on the command line is one line naming it, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

NO_SECRET = ["--insecure-no-link-secret"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve", "--backend", "mock", "--sip-listen", "nonsense"], "--sip-listen: 'nonsense'"),
        (["relay", "--transceiver", "http://127.0.0.1:9", "--port", "abc"], "--port: Input"),
        (["transceiver", "--backend", "openai", "--vad", "silero"], "--local-turn-detection"),
        (  # a model file that is not there: one line at start, not a traceback
            [
                "transceiver",
                "--backend",
                "openai",
                "--local-turn-detection",
                "--vad",
                "silero",
                "--vad-model",
                "/nonexistent/silero_vad.onnx",
                "--insecure-no-link-secret",
            ],
            "transceiver not started: Silero VAD model not found",
        ),
        (  # each thing the transceiver builds before it serves (transceiver/startup.py)
            ["transceiver", "--backend", "mock", "--prompts", "/nonexistent/prompts", *NO_SECRET],
            "transceiver not started: --prompts /nonexistent/prompts: not a directory",
        ),
        (
            [
                "transceiver",
                "--backend",
                "mock",
                "--turn-model",
                "/nonexistent/turn.onnx",
                *NO_SECRET,
            ],
            "transceiver not started: end-of-turn model not found: /nonexistent/turn.onnx",
        ),
        (
            ["transceiver", "--backend", "mock", "--turn-transcribe", "--turn-text-model", "none"],
            "--turn-text-model none turns that off",
        ),
        (["transceiver", "--backend", "openai", "--turn-transcribe"], "--turn-transcribe: the"),
        (
            ["transceiver", "--backend", "openai", "--turn-threshold", "0.7"],
            "--turn-threshold: the openai backend detects no turns itself",
        ),
    ],
)
def test_a_bad_option_is_one_line(argv: list[str], line: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert line in result.stderr and "Traceback" not in result.stderr, result.stderr
