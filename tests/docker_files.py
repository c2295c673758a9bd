"""Reading docker-compose.yml and the Dockerfiles, and the code's side of each name they use
(for tests/test_docker.py; Docker is not needed)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.cli import build_parser
from relay.settings import RelaySettings
from transceiver.__main__ import build_parser as build_transceiver_parser
from transceiver.settings import TransceiverSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted((ROOT / "docker").glob("*Dockerfile"))
ENV_NAME = re.compile(r"\bRELAY_[A-Z0-9_]+\b")
# ${NAME}, ${NAME:-default} / ${NAME-default}, or ${NAME:?message} / ${NAME?message}
# (required: compose refuses to start without it).
INTERPOLATION = re.compile(r"^\$\{(\w+)(?::?-([^}]*)|(:?\?)[^}]*)?\}$")
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(?P<port>\d+|%s)(?P<path>/[\w/.-]*)")
SETTINGS: dict[str, type[RelaySettings] | type[TransceiverSettings]] = {
    "relay": RelaySettings,
    "serve": RelaySettings,
    "transceiver": TransceiverSettings,
}


# --- Dockerfiles, line by line ---------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            found.update(parse_env(instruction.args))
        return found


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, where Docker drops them too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the last instruction ends with a line continuation"
    return instructions


def stages_of(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in parse_dockerfile(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            stages.append(Stage(split_flags(instruction.args)[1].split()[0]))
        else:
            assert stages, f"{path.name}:{instruction.line} comes before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def parse_env(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # the legacy form: ENV NAME value
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """``--from=builder --chown=x a b`` -> ({"from": "builder", "chown": "x"}, "a b")."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def argv_of(args: str) -> list[str]:
    """Exec form (a JSON array) or shell form (run by ``/bin/sh -c``)."""
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words), args
        return words
    return ["/bin/sh", "-c", args]


def healthcheck_argv(stage: Stage) -> list[str] | None:
    checks = stage.all("HEALTHCHECK")
    assert len(checks) <= 1, "more than one HEALTHCHECK"
    if not checks:
        return None
    _, rest = split_flags(checks[0].args)
    if rest.upper() == "NONE":
        return None
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", checks[0]
    return argv_of(command.strip())


def final_cmd(stage: Stage) -> list[str]:
    cmds = stage.all("CMD")
    assert cmds, "no CMD"
    entry = stage.all("ENTRYPOINT")
    return (argv_of(entry[-1].args) if entry else []) + argv_of(cmds[-1].args)


# --- the compose file ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict) and found
    return found


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return {k: (v if sep else None) for k, sep, v in pairs}
    return {k: None if v is None else str(v) for k, v in env.items()}


def resolved(value: str | None) -> str | None:
    """The value a container sees when the host sets nothing (None: not set by compose)."""
    if value is None:
        return None
    match = INTERPOLATION.match(value)
    if match:
        return match.group(2)  # None for ${NAME} without a default, or a required one
    return value


def required_from_host(value: str | None) -> str | None:
    """The host variable a ``${NAME:?message}`` value requires (None: not a required one)."""
    match = INTERPOLATION.match(value or "")
    return match.group(1) if match and match.group(3) else None


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def shell_words(command: Any) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command]


def healthcheck_test(service: dict[str, Any]) -> list[str] | None:
    """The compose health check as an argv (``CMD-SHELL`` runs ``/bin/sh -c``)."""
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *words = test
    if kind == "NONE":
        return None
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(words)]
    assert kind == "CMD", test
    return list(words)


@dataclass(frozen=True)
class Container:
    """What a compose service runs: its command, its environment, its settings class."""

    name: str
    service: dict[str, Any]
    stage: Stage | None
    command: list[str]
    env: dict[str, str]

    @property
    def subcommand(self) -> str | None:
        return subcommand_of(self.command)

    @property
    def settings(self) -> type[RelaySettings] | type[TransceiverSettings] | None:
        return SETTINGS.get(self.subcommand or "")

    def setting(self, name: str) -> Any:
        assert self.settings is not None
        value = self.env.get("RELAY_" + name.upper())
        return value if value is not None else self.settings.model_fields[name].default


def containers() -> list[Container]:
    found = []
    for name, service in services().items():
        path = dockerfile_of(service)
        stage = stages_of(path)[-1] if path else None
        command = final_cmd(stage) if stage else []
        if "entrypoint" in service:
            command = shell_words(service["entrypoint"]) + shell_words(service.get("command", []))
        elif "command" in service:
            command = command[:1] if stage and stage.all("ENTRYPOINT") else []
            command += shell_words(service["command"])
        env = dict(stage.env()) if stage else {}
        for key, value in environment(service).items():
            if resolved(value) is not None:
                env[key] = str(resolved(value))
        found.append(Container(name, service, stage, command, env))
    return found


def images() -> list[Container]:
    """Each image run alone (``docker run IMAGE``): its final stage, CMD and ENV."""
    found = []
    for path in DOCKERFILES:
        final = stages_of(path)[-1]
        found.append(Container(path.name, {}, final, final_cmd(final), final.env()))
    assert all(c.settings is not None for c in found), "an image runs no realtime-relay command"
    return found


def ours() -> list[Container]:
    """The services running this project (not, say, ollama)."""
    found = [c for c in containers() if c.settings is not None]
    assert {c.subcommand for c in found} >= {"relay", "transceiver"}
    return found


# --- the code's side -------------------------------------------------------------------------


def known_env_names() -> set[str]:
    """RELAY_<FIELD> of both settings classes, plus the CLI's own ``[env RELAY_X]`` options."""
    names = set()
    for settings in (RelaySettings, TransceiverSettings):
        prefix = str(settings.model_config.get("env_prefix", ""))
        names |= {(prefix + name).upper() for name in settings.model_fields}
    for parser in subparsers().values():
        for action in parser._actions:
            names |= set(re.findall(r"\[env (RELAY_\w+)", action.help or ""))
    return names


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(subcommand: str) -> set[str]:
    """Flags ``realtime-relay SUBCOMMAND`` accepts (serve lists the transceiver options it
    passes on among its own)."""
    if subcommand == "transceiver":
        return set(build_transceiver_parser()._option_string_actions)
    return set(subparsers()[subcommand]._option_string_actions)


def subcommand_of(argv: list[str]) -> str | None:
    words = [Path(w).name for w in argv]
    if "realtime-relay" in words:
        after = argv[words.index("realtime-relay") + 1 :]
        return after[0] if after else ""
    for i, word in enumerate(words[:-1]):
        if word == "-m" and argv[i + 1] in ("transceiver", "relay.cli"):
            after = argv[i + 2 :]
            return "transceiver" if argv[i + 1] == "transceiver" else (after or [""])[0]
    return None


def all_commands() -> Iterator[tuple[str, list[str]]]:
    """Every argv the images and the compose file run, with where it comes from."""
    for path in DOCKERFILES:
        for stage in stages_of(path):
            for keyword in ("CMD", "ENTRYPOINT"):
                for instruction in stage.all(keyword):
                    yield f"{path.name}:{instruction.line}", argv_of(instruction.args)
            check = healthcheck_argv(stage)
            if check:
                yield f"{path.name} HEALTHCHECK", check
    for name, service in services().items():
        for key in ("command", "entrypoint"):
            if key in service:
                yield f"compose {name}.{key}", shell_words(service[key])
        check = healthcheck_test(service)
        if check:
            yield f"compose {name}.healthcheck", check


def check_cli(argv: list[str]) -> list[str]:
    """Problems with a ``realtime-relay ...`` command line (empty: none)."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return [p for line in argv[2].split("&&") for p in check_cli(shlex.split(line))]
    subcommand = subcommand_of(argv)
    if subcommand is None:
        return []
    if subcommand not in subparsers():
        return [f"unknown subcommand {subcommand!r} in {argv}"]
    flags = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
    return [f"{flag} is no option of {subcommand}" for flag in flags - options_of(subcommand)]


def python_code(argv: list[str]) -> str | None:
    if Path(argv[0]).name.startswith("python") and "-c" in argv:
        return argv[argv.index("-c") + 1]
    return None
