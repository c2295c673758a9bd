"""Project-level checks: import arrows, the README snippet, the CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import relay_server

ROOT = Path(__file__).resolve().parents[1]


def imports_of(package: str) -> set[tuple[str, str]]:
    found = set()
    root = ROOT / package
    for path in [root] if root.is_file() else root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path.relative_to(ROOT)), a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module))
    return found


def test_import_arrows_point_inward() -> None:
    """relay -> transceiver.protocol and the leaf transceiver.observability only; the protocol
    core is pure; models import no layer."""
    for where, module in imports_of("relay"):
        assert not module.startswith("models"), f"{where} imports {module}"
        if module.startswith("transceiver"):
            assert module.startswith(("transceiver.protocol", "transceiver.observability")), (
                f"{where} imports {module}"
            )
    for where, module in imports_of("transceiver/observability.py"):
        assert not module.startswith(("relay", "transceiver", "models")), f"{where} {module}"
    pure_forbidden = (
        "asyncio",
        "socket",
        "threading",
        "time",
        "numpy",
        "models",
        "relay",
        "websockets",
        "fastapi",
    )
    for where, module in imports_of("transceiver/protocol"):
        assert module.split(".")[0] not in pure_forbidden, f"{where} imports {module}"
        assert not module.startswith(("transceiver.backends", "transceiver.runner")), where
    for where, module in imports_of("models"):
        assert not module.startswith(("relay", "transceiver")), f"{where} imports {module}"


def test_readme_snippet_runs_against_a_server() -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)
    assert snippet is not None
    code = snippet.group(1)
    assert "http://127.0.0.1:8000/v1" in code
    with relay_server("--backend", "mock", "--mock-first-delta-ms", "0") as server:
        run = subprocess.run(
            [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
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
        health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
        ports = [int(m["url"].rsplit(":", 1)[1]) for m in health["transceivers"]]
    for port in ports:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
