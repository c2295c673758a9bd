"""Rendering deploy/kubernetes's overlays and reading the objects (for
tests/test_kubernetes.py; a cluster is not needed, only ``kubectl`` or ``kustomize``)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.settings import RelaySettings
from tests.docker_files import ROOT, Container, images
from transceiver.settings import TransceiverSettings

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
SECRET = "realtime-relay-secrets"


def kustomize_command(path: Path) -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(path)]
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(path)]
    pytest.skip("neither kubectl nor kustomize is installed: run `make test-deps` (apt-get)")


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/kubernetes/overlays/OVERLAY``, as objects."""
    done = subprocess.run(
        kustomize_command(KUBE / "overlays" / overlay),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{overlay}: {done.stderr}"
    objects = tuple(o for o in yaml.safe_load_all(done.stdout) if o)
    assert objects, f"{overlay} renders nothing"
    return objects


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"no single {kind} {name}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Pod:
    """One container of a Deployment, with what the code says about its image."""

    deployment: dict[str, Any]
    container: dict[str, Any]
    image: Container  # the Dockerfile's final stage, its command and settings class

    @property
    def name(self) -> str:
        return str(self.deployment["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.deployment["spec"]["template"]["metadata"]["labels"])

    @property
    def settings(self) -> type[RelaySettings] | type[TransceiverSettings]:
        assert self.image.settings is not None
        return self.image.settings

    @property
    def subcommand(self) -> str:
        return str(self.image.subcommand)

    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container.get("env", [])}

    def value(self, name: str) -> str | None:
        entry = self.env().get(name)
        return None if entry is None or "value" not in entry else str(entry["value"])

    def setting(self, name: str) -> Any:
        given = self.value("RELAY_" + name.upper())
        return given if given is not None else self.settings.model_fields[name].default

    def port(self, port: int | str) -> int:
        """A probe's or a Service's port: a number or the name of a container port."""
        if isinstance(port, int):
            return port
        by_name = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        assert port in by_name, f"{self.name}: no container port named {port!r}"
        return int(by_name[port])


def image_of(reference: str) -> Container:
    """``realtime-relay-NAME[:tag]`` is what ``docker/NAME.Dockerfile`` builds."""
    match = re.fullmatch(r"(?:[\w.:-]+/)*realtime-relay-(\w+)(?::[\w.-]+)?", reference)
    assert match, f"{reference}: not an image this repository builds"
    by_file = {c.name: c for c in images()}
    dockerfile = f"{match.group(1)}.Dockerfile"
    assert dockerfile in by_file, f"{reference}: no docker/{dockerfile}"
    return by_file[dockerfile]


def pods(objects: tuple[dict[str, Any], ...]) -> list[Pod]:
    found = []
    for deployment in of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            found.append(Pod(deployment, container, image_of(container["image"])))
    assert {p.subcommand for p in found} == {"relay", "transceiver"}
    return found


def pod(objects: tuple[dict[str, Any], ...], subcommand: str) -> Pod:
    (found,) = [p for p in pods(objects) if p.subcommand == subcommand]
    return found


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def readme_secret_keys() -> set[str]:
    """The keys the README's ``kubectl create secret generic realtime-relay-secrets``
    commands create."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    keys: set[str] = set()
    pattern = rf"kubectl create secret generic {SECRET}(?:[^\n]*\\\n)*[^\n]*"
    for command in re.findall(pattern, text):
        keys |= set(re.findall(r"--from-literal=([\w.-]+)=", command))
    return keys
