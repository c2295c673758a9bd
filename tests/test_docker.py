"""The Docker files agree with the code: paths, settings, commands, ports, health checks.

Docker is not needed: ``docker-compose.yml`` is read with PyYAML and the Dockerfiles line by
line, then compared with the settings classes, the CLI parsers, the relay's routes and
``pyproject.toml`` as they are when the tests run. The health check commands themselves are
run against a real relay and a real mock transceiver on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.app import create_app
from relay.settings import RelaySettings
from tests.docker_files import (
    COMPOSE,
    DOCKERFILES,
    ENV_NAME,
    HEALTH_URL,
    ROOT,
    Container,
    all_commands,
    check_cli,
    compose,
    containers,
    dockerfile_of,
    environment,
    final_cmd,
    healthcheck_argv,
    healthcheck_test,
    images,
    known_env_names,
    ours,
    python_code,
    required_from_host,
    services,
    split_flags,
    stages_of,
    subcommand_of,
)
from tests.servers import relay_server

# --- paths -----------------------------------------------------------------------------------


def test_compose_has_no_version_key_and_declares_its_volumes() -> None:
    data = compose()
    assert "version" not in data, "compose v2 ignores `version:` and warns about it"
    declared = set(data.get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} not under `volumes:`"


def test_compose_builds_existing_dockerfiles() -> None:
    built = {dockerfile_of(s) for s in services().values()} - {None}
    assert built, "no service is built from this repository"
    for path in built:
        assert path is not None and path.is_file(), f"no such Dockerfile: {path}"
    assert built == set(DOCKERFILES), "a Dockerfile under docker/ that compose does not build"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + "$")


def dockerignored(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a matched folder hides what is in it."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_build_context_small() -> None:
    for path in (".venv", ".git", ".venv/bin/python", "bench/out/x.json", ".mypy_cache"):
        assert dockerignored(path), f"{path} goes into the build context"
    assert dockerignored("tests/clients/node/node_modules/ws/index.js")
    assert not dockerignored("relay/app.py")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(path: Path) -> None:
    copied = 0
    for stage in stages_of(path):
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, rest = split_flags(instruction.args)
            if "from" in flags:
                continue  # from another stage or image, not the repository
            words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            assert len(words) >= 2, instruction
            for source in words[:-1]:
                matches = list(ROOT.glob(source.rstrip("/"))) if "*" in source else [ROOT / source]
                where = f"{path.name}:{instruction.line}"
                assert matches and all(m.exists() for m in matches), f"{where}: no {source}"
                assert not dockerignored(source), f"{where}: {source} is in .dockerignore"
                copied += 1
    assert copied


# --- settings and commands -------------------------------------------------------------------


def test_every_relay_env_var_named_is_a_setting() -> None:
    known = known_env_names()
    assert {"RELAY_PORT", "RELAY_BACKEND", "RELAY_TRANSCEIVER", "RELAY_TRANSCEIVERS"} <= known
    for path in [COMPOSE, *DOCKERFILES]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in ENV_NAME.findall(line):
                assert name in known, f"{path.name}:{number}: {name} is no setting"


def test_compose_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values set (or their ``${NAME:-default}`` defaults) pass the settings' validation,
    read from the environment as in the container (an empty value means unset)."""
    for container in ours():
        assert container.settings is not None
        with monkeypatch.context() as env:
            for name in [n for n in os.environ if n.startswith("RELAY_")]:
                env.delenv(name)
            for name, value in container.env.items():
                if name.startswith("RELAY_") and value is not None:
                    env.setenv(name, value)
            container.settings()


def test_relay_and_transceivers_share_a_required_link_secret() -> None:
    """One host variable gives the relay and every transceiver their link secret, and
    compose refuses to start without it (``${RELAY_LINK_SECRET:?...}``): a transceiver
    without one would not start, and one with a default would share a public secret."""
    for container in ours():
        value = environment(container.service).get("RELAY_LINK_SECRET")
        assert required_from_host(value) == "RELAY_LINK_SECRET", f"{container.name}: {value}"
    for image in images():  # no image bakes a secret in
        assert "RELAY_LINK_SECRET" not in image.env, image.name


def test_commands_are_real_subcommands_with_real_options() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "realtime-relay" in scripts["scripts"]
    seen = set()
    for where, argv in all_commands():
        assert not check_cli(argv), f"{where}: {check_cli(argv)}"
        if subcommand_of(argv) is not None:
            seen.add(subcommand_of(argv))
        code = python_code(argv)
        if code is not None:
            compile(code, where, "exec")  # a syntax error would fail every health check
    assert {"relay", "transceiver"} <= seen


def test_cli_checker_catches_mistakes() -> None:
    assert check_cli(["realtime-relay", "relay", "--transceiver", "ws://t:8100"]) == []
    assert check_cli(["realtime-relay", "transceiver", "--backend", "mock"]) == []
    assert check_cli(["realtime-relay", "serve", "--mock-script", "x.yaml"]) == []
    assert check_cli(["realtime-relay", "relays"])
    assert check_cli(["realtime-relay", "relay", "--backend", "mock"])
    assert check_cli(["/bin/sh", "-c", "realtime-relay transceiver --no-such-flag"])


def test_the_images_run_the_project_as_a_user_on_a_supported_python() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = tuple(int(p) for p in re.findall(r"\d+", project["requires-python"])[:2])
    for path in DOCKERFILES:
        final = stages_of(path)[-1]
        version = re.match(r"python:(\d+)\.(\d+)", final.base)
        assert version, f"{path.name}: final stage is not an official python image"
        assert tuple(map(int, version.groups())) >= minimum, path.name
        users = final.all("USER")
        assert users and users[-1].args.split(":")[0] not in ("root", "0"), path.name
        assert final_cmd(final)[0].startswith("realtime-relay"), f"{path.name}: CMD"
        assert final.all("CMD")[-1].args.startswith("["), f"{path.name}: shell-form CMD"


def test_pip_extras_exist_and_only_the_transceiver_gets_models() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    installed: dict[str, set[str]] = {}
    for path in DOCKERFILES:
        for stage in stages_of(path):
            for instruction in stage.all("RUN"):
                if "pip" not in instruction.args:
                    continue
                for group in re.findall(r"(?:\.|realtime-relay)\[([\w,-]+)\]", instruction.args):
                    for extra in group.split(","):
                        assert extra in extras, f"{path.name}:{instruction.line}: [{extra}]"
                        installed.setdefault(path.name, set()).add(extra)
    assert "local" in installed.get("transceiver.Dockerfile", set())
    assert "local" not in installed.get("relay.Dockerfile", set()), "the relay needs no models"


# --- ports, hosts and health -----------------------------------------------------------------


def container_ports(service: dict[str, Any]) -> set[int]:
    found = set()
    for entry in service.get("ports", []):
        target = entry.get("target") if isinstance(entry, dict) else str(entry).split(":")[-1]
        found.add(int(str(target).split("/")[0]))
    return found | {int(str(entry).split("/")[0]) for entry in service.get("expose", [])}


@pytest.mark.parametrize("compose_file", [True, False], ids=["compose", "image alone"])
def test_exposed_ports_are_the_ports_listened_on(compose_file: bool) -> None:
    for container in ours() if compose_file else images():
        port = int(container.setting("port"))
        assert container.stage is not None
        exposed = {
            int(word.split("/")[0])
            for instruction in container.stage.all("EXPOSE")
            for word in instruction.args.split()
        }
        assert exposed == {port}, f"{container.name}: EXPOSE {exposed}, listens on {port}"
        assert container_ports(container.service) <= {port}, f"{container.name}: ports"
        host = container.setting("host")
        assert host in ("0.0.0.0", "::"), f"{container.name} listens on {host} only"


def transceiver_urls(container: Container) -> list[str]:
    """RELAY_TRANSCEIVER (comma-separated) and any ``--transceiver URL`` in the command."""
    urls = container.env.get("RELAY_TRANSCEIVER", "").split(",")
    argv = container.command
    urls += [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--transceiver"]
    return [url.strip() for url in urls if url.strip()]


def test_the_relay_reaches_transceiver_services() -> None:
    by_name = {c.name: c for c in containers()}
    relays = [c for c in ours() if c.subcommand == "relay"]
    assert relays
    for relay in relays:
        urls = transceiver_urls(relay)
        assert urls, f"{relay.name}: `realtime-relay relay` needs RELAY_TRANSCEIVER"
        for url in urls:
            match = re.match(r"wss?://([^:/]+):(\d+)$", url)
            assert match, f"{relay.name}: {url} is not ws://SERVICE:PORT"
            target = by_name.get(match.group(1))
            assert target is not None, f"{url}: no compose service {match.group(1)!r}"
            assert target.subcommand == "transceiver", f"{url}: {target.name} is no transceiver"
            assert int(match.group(2)) == int(target.setting("port")), f"{url}: wrong port"
            assert "profiles" not in target.service, f"{url} is only up in a profile"


def test_transceivers_scale() -> None:
    for container in ours():
        if container.subcommand != "transceiver":
            continue
        service = container.service
        assert "container_name" not in service, "a fixed name stops --scale"
        assert not service.get("ports"), "a fixed host port stops --scale"
        targets = [str(v).split(":")[1] for v in service.get("volumes", [])]
        assert "/models" in targets, "no volume for extra weights at /models"


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_stop_grace_period_outlasts_the_drain() -> None:
    for container in ours():
        grace = seconds(container.service.get("stop_grace_period", "10s"))
        drain = float(container.setting("drain_timeout_s"))
        assert grace > drain, f"{container.name}: killed {grace}s in, drains for {drain}s"


def test_healthy_dependencies_have_health_checks() -> None:
    by_name = {c.name: c for c in containers()}
    for container in containers():
        depends = container.service.get("depends_on") or {}
        for target, condition in depends.items() if isinstance(depends, dict) else []:
            if (condition or {}).get("condition") != "service_healthy":
                continue
            other = by_name[target]
            has_check = healthcheck_test(other.service) is not None or (
                other.stage is not None and healthcheck_argv(other.stage) is not None
            )
            assert has_check, f"{container.name} waits for {target} to be healthy: no check"
    assert any(healthcheck_test(c.service) for c in ours() if c.subcommand == "transceiver")


def test_ollama_only_in_its_profile() -> None:
    by_name = services()
    ollama = [n for n, s in by_name.items() if "ollama" in n or "ollama" in s.get("image", "")]
    assert ollama == ["ollama"]
    assert by_name["ollama"].get("profiles") == ["ollama"]
    for name, service in by_name.items():
        if "profiles" in service:
            continue
        assert "ollama" not in (service.get("depends_on") or {}), name
    assert "RELAY_LLM_URL" in environment(by_name["transceiver"]), "no way to point at ollama"


def health_checks() -> Iterator[tuple[str, Container, list[str]]]:
    """(where, container, argv) for every health check, in compose and of the images alone."""
    for container in ours() + images():
        assert container.stage is not None
        image = healthcheck_argv(container.stage)
        assert image, f"{container.name}: the image has no HEALTHCHECK"
        yield f"{container.name} (HEALTHCHECK)", container, image
        service = healthcheck_test(container.service)
        if service:
            yield f"{container.name} (compose)", container, service


def health_url(argv: list[str], port: int) -> tuple[int, str]:
    """The port and path a health check asks, with ``os.environ.get('RELAY_PORT', ...)``."""
    code = python_code(argv)
    assert code is not None, f"{argv}: slim images have no curl or wget; use python -c"
    match = HEALTH_URL.search(code)
    assert match, f"no http://127.0.0.1:PORT/... in {code}"
    if match.group("port") != "%s":
        return int(match.group("port")), match.group("path")
    env = re.search(r"os\.environ\.get\('(RELAY_\w+)', '(\d+)'\)", code)
    assert env and env.group(1) == "RELAY_PORT", code
    assert int(env.group(2)) == port, f"the fallback port {env.group(2)} is not {port}"
    return port, match.group("path")


def test_health_checks_ask_healthz_on_the_served_port() -> None:
    relay_routes = set(create_app(RelaySettings()).openapi()["paths"])  # its HTTP routes
    assert "/healthz" in relay_routes
    for where, container, argv in health_checks():
        port = int(container.setting("port"))
        asked_port, path = health_url(argv, port)
        assert asked_port == port, f"{where}: asks port {asked_port}, listens on {port}"
        assert path == "/healthz", f"{where}: {path}"
        if container.subcommand != "transceiver":
            assert path in relay_routes, f"{where}: the relay serves no {path}"


def run_check(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    code = python_code(argv)
    assert code is not None
    code = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{port}/", code)
    env = {"RELAY_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )


def test_health_checks_pass_against_a_relay_and_a_transceiver() -> None:
    """Each health check command, run as it is, against real servers on loopback."""
    checks = list(health_checks())
    link = {"RELAY_LINK_SECRET": "a-link-secret-for-the-health-checks"}
    with relay_server(
        command="transceiver", timeout_s=120, env={"RELAY_BACKEND": "mock", **link}
    ) as transceiver:
        # As in the compose file: the relay's transceivers come from the environment.
        env = {
            "RELAY_TRANSCEIVER": f"ws://127.0.0.1:{transceiver.port}",
            "RELAY_API_KEYS": "",
            **link,
        }
        with relay_server(command="relay", timeout_s=120, env=env) as relay:
            ports = {"transceiver": transceiver.port, "relay": relay.port}
            for where, container, argv in checks:
                done = run_check(argv, ports[str(container.subcommand)])
                assert done.returncode == 0, f"{where}: {done.stderr}"
    closed = run_check(checks[0][2], ports[str(checks[0][1].subcommand)])
    assert closed.returncode != 0, "a health check that passes with nothing listening"
