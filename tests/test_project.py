"""Project-level checks: the import contracts, the README snippet, the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import relay_server
from tests.waiting import run_process

ROOT = Path(__file__).resolve().parents[1]


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# One import that breaks each import-linter contract in pyproject.toml.
VIOLATIONS = {
    "transceiver/protocol/ids.py": ("import asyncio", "The protocol core is pure"),
    "relay/auth.py": ("import models.vad", "The relay never imports models"),
    "transceiver/lag.py": ("import relay.auth", "The transceiver never imports the relay"),
    "models/errors.py": ("import transceiver.runner", "Models import no layer above them"),
    "relay/settings.py": ("import loadgen", "The load generator is client code"),
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_contracts_hold_and_fail_when_broken(tmp_path: Path) -> None:
    """The layer rules of pyproject.toml's [tool.importlinter] hold here, and each one
    fails when a module breaks it."""
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert " BROKEN" not in kept.stdout
    for package in ("relay", "transceiver", "models", "loadgen"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for path, (line, _) in VIOLATIONS.items():
        with (tmp_path / path).open("a") as module:
            module.write(f"\n{line}  # noqa\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    report = " ".join(broken.stdout.split())  # long contract names wrap
    for _, contract in VIOLATIONS.values():
        assert re.search(re.escape(contract) + r".* BROKEN", report), (contract, report)
    assert f"Contracts: 0 kept, {len(VIOLATIONS)} broken." in report


def test_readme_snippet_runs_against_a_server() -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)
    assert snippet is not None
    code = snippet.group(1)
    assert "http://127.0.0.1:8000/v1" in code
    with relay_server("--backend", "mock", "--mock-first-delta-ms", "0") as server:
        run = run_process(
            [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")],
            60,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Say hello!"  # the mock echoes


@pytest.mark.parametrize("command", ["serve", "relay", "transceiver"])
def test_cli_help_documents_env_vars(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--port" in out and "RELAY_" in out


def test_serve_stops_children_on_sigterm() -> None:
    with relay_server("--backend", "mock", "--transceivers", "2") as server:
        status = httpx.get(f"http://127.0.0.1:{server.port}/status").json()
        ports = [int(m["url"].rsplit(":", 1)[1]) for m in status["transceivers"]]
        assert len(ports) == 2
    for port in ports:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_serve_lists_and_passes_on_the_transceiver_options() -> None:
    from relay.cli import _transceiver_args, build_parser

    help_text = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "transceiver options" in help_text
    for flag in ("--mock-script", "--llm-url", "--upstream-url", "--max-sessions"):
        assert flag in help_text, flag
    args = build_parser().parse_args(
        ["serve", "--backend", "mock", "--mock-script", "s.yaml", "--no-mock-realtime"]
    )
    assert _transceiver_args(args) == ["--mock-script", "s.yaml", "--no-mock-realtime"]
    with pytest.raises(SystemExit):  # a misspelt option is an error, not passed on
        build_parser().parse_args(["serve", "--mock-scrpit", "s.yaml"])
