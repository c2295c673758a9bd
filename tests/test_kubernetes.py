"""deploy/kubernetes agrees with the Kubernetes schemas and with the code.

Every overlay is rendered with ``kubectl kustomize`` (``make test-deps`` installs kubectl),
each object is validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields fail), and the manifests are compared with the settings classes,
the Dockerfiles and the servers as tests/test_docker.py does for compose. The probes are
asked of a real relay and a real mock transceiver on loopback. A cluster is not needed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import kubernetes_validate
import pytest

from tests.docker_files import known_env_names
from tests.kube_files import (
    OVERLAYS,
    SECRET,
    Pod,
    cpu_cores,
    named,
    of_kind,
    pod,
    pods,
    readme_secret_keys,
    render,
)
from tests.servers import relay_server
from transceiver.settings import TransceiverSettings, local_max_sessions

KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when written


def test_there_is_an_overlay_per_backend() -> None:
    backends = set(TransceiverSettings.model_fields["backend"].annotation.__args__)  # type: ignore[union-attr]
    assert set(OVERLAYS) == backends
    for overlay in OVERLAYS:
        assert pod(render(overlay), "transceiver").value("RELAY_BACKEND") == overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_are_valid_kubernetes(overlay: str) -> None:
    for item in render(overlay):
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {item['kind']} {item['metadata']['name']}: {exc}")


def test_the_validator_catches_mistakes() -> None:
    deployment = dict(of_kind(render("mock"), "Deployment")[0])
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# --- settings --------------------------------------------------------------------------------


def env_values(item: Pod) -> dict[str, str]:
    """The container's RELAY_* environment as the process sees it: ``$(POD_IP)`` expanded,
    a Secret's value stood in for by a placeholder."""
    found = {}
    for name, entry in item.env().items():
        if "value" in entry:
            found[name] = re.sub(r"\$\(POD_IP\)", "10.0.0.7", str(entry["value"]))
        else:
            found[name] = "secret-value"
    return {k: v for k, v in found.items() if k.startswith("RELAY_")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_a_setting_with_a_valid_value(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = known_env_names()
    for item in pods(render(overlay)):
        for name in item.env():
            assert name in known or not name.startswith("RELAY_"), f"{item.name}: {name}"
        with monkeypatch.context() as env:
            for name in [n for n in os.environ if n.startswith("RELAY_")]:
                env.delenv(name)
            for name, value in env_values(item).items():
                env.setenv(name, value)
            item.settings()
        for name, entry in item.env().items():  # $(NAME) must name an earlier variable
            for ref in re.findall(r"\$\((\w+)\)", str(entry.get("value", ""))):
                assert ref in list(item.env())[: list(item.env()).index(name)], ref


def secret_refs(item: Pod) -> dict[str, dict[str, Any]]:
    refs = {}
    for name, entry in item.env().items():
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            refs[name] = ref
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_one_secret_the_readme_creates(overlay: str) -> None:
    created = readme_secret_keys()
    objects = render(overlay)
    for item in pods(objects):
        for name, ref in secret_refs(item).items():
            assert ref["name"] == SECRET, f"{item.name}: {name}"
            assert ref.get("optional") or ref["key"] in created, f"README never creates {ref}"
    relay, transceiver = pod(objects, "relay"), pod(objects, "transceiver")
    link = secret_refs(relay)["RELAY_LINK_SECRET"]
    assert link == secret_refs(transceiver)["RELAY_LINK_SECRET"], "one shared link secret"
    assert not link.get("optional"), "a transceiver without its link secret does not start"
    assert "RELAY_KEY_SECRET" in secret_refs(relay), "replicas must share the key secret"
    for item in pods(objects):  # no secret as a plain value
        for name in ("RELAY_LINK_SECRET", "RELAY_KEY_SECRET", "RELAY_API_KEYS"):
            assert item.value(name) is None, f"{item.name}: {name} in the manifest"


def test_the_proxy_gets_its_upstream_key_from_the_secret() -> None:
    transceiver = pod(render("openai"), "transceiver")
    refs = secret_refs(transceiver)
    assert {"RELAY_UPSTREAM_API_KEY", "OPENAI_API_KEY"} & set(refs)


# --- ports, discovery, probes, drains ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_are_the_ports_listened_on(overlay: str) -> None:
    objects = render(overlay)
    for item in pods(objects):
        port = int(item.setting("port"))
        assert [p["containerPort"] for p in item.container["ports"]] == [port], item.name
        assert item.setting("host") in ("0.0.0.0", "::"), f"{item.name} listens on loopback"
        exposed = {
            int(word.split("/")[0])
            for instruction in stages_of_image(item)
            for word in instruction.split()
        }
        assert exposed == {port}, f"{item.name}: the image exposes {exposed}"
        services = [s for s in of_kind(objects, "Service") if selects(s, item)]
        assert services, f"no Service in front of {item.name}"
        for service in services:
            for entry in service["spec"]["ports"]:
                assert item.port(entry["targetPort"]) == port, service["metadata"]["name"]


def stages_of_image(item: Pod) -> list[str]:
    assert item.image.stage is not None
    return [i.args for i in item.image.stage.all("EXPOSE")]


def selects(service: dict[str, Any], item: Pod) -> bool:
    selector = service["spec"].get("selector") or {}
    return bool(selector) and all(item.labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_relay_discovers_transceivers_through_a_headless_service(overlay: str) -> None:
    objects = render(overlay)
    relay, transceiver = pod(objects, "relay"), pod(objects, "transceiver")
    urls = str(relay.value("RELAY_TRANSCEIVER")).split(",")
    assert len(urls) == 1, "one name for all transceivers"
    match = re.fullmatch(r"ws://([a-z0-9-]+):(\d+)", urls[0])
    assert match, urls
    service = named(objects, "Service", match.group(1))
    assert service["spec"].get("clusterIP") == "None", "a ClusterIP gives one address, not N"
    assert selects(service, transceiver) and not selects(service, relay)
    assert int(match.group(2)) == int(transceiver.setting("port"))
    assert not service["spec"].get("publishNotReadyAddresses"), "draining pods would stay"


def probes(item: Pod) -> dict[str, dict[str, Any]]:
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: item.container[kind] for kind in kinds if kind in item.container}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_healthz_and_liveness_outlasts_the_drain(overlay: str) -> None:
    for item in pods(render(overlay)):
        found = probes(item)
        assert {"readinessProbe", "livenessProbe"} <= set(found), item.name
        drain = float(item.setting("drain_timeout_s"))
        for kind, probe in found.items():
            assert probe["httpGet"]["path"] == "/healthz", f"{item.name} {kind}"
            port = item.port(probe["httpGet"]["port"])
            assert port == int(item.setting("port")), f"{item.name} {kind}: port {port}"
        # /healthz answers 503 while draining: a liveness probe that gave up sooner would
        # restart the container in the middle of its drain.
        live = found["livenessProbe"]
        tolerated = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
        assert tolerated > drain, f"{item.name}: restarted {tolerated}s into a {drain}s drain"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_outlast_the_drain(overlay: str) -> None:
    for item in pods(render(overlay)):
        grace = float(item.spec.get("terminationGracePeriodSeconds", 30))
        drain = float(item.setting("drain_timeout_s"))
        assert grace > drain, f"{item.name}: killed {grace}s in, drains for {drain}s"


def test_probes_pass_against_a_relay_and_a_transceiver() -> None:
    """Each probe's path and port, asked of real servers on loopback configured with the
    manifests' own values (the mock overlay's transceiver)."""
    objects = render("mock")
    link = {"RELAY_LINK_SECRET": "a-link-secret-for-the-probes"}
    transceiver_pod, relay_pod = pod(objects, "transceiver"), pod(objects, "relay")
    asked = 0
    transceiver_env = {"RELAY_BACKEND": "mock", **link}
    with relay_server(command="transceiver", timeout_s=120, env=transceiver_env) as t:
        env = {"RELAY_TRANSCEIVER": f"ws://127.0.0.1:{t.port}", "RELAY_API_KEYS": "", **link}
        with relay_server(command="relay", timeout_s=120, env=env) as r:
            for item, port in ((transceiver_pod, t.port), (relay_pod, r.port)):
                for kind, probe in probes(item).items():
                    url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
                    reply = httpx.get(url, timeout=5)
                    assert reply.status_code == 200, f"{item.name} {kind}: {reply.text}"
                    asked += 1
    assert asked >= 4


# --- availability, scaling, network ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_their_pods(overlay: str) -> None:
    objects = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items())
    for budget in of_kind(objects, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        hits = [d for d in deployments.values() if selects_labels(selector, d)]
        assert len(hits) == 1, f"PDB {budget['metadata']['name']} selects {len(hits)}"
    transceiver = pod(objects, "transceiver")
    (scaler,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert scaler["spec"]["scaleTargetRef"]["name"] == transceiver.name
    assert scaler["spec"]["minReplicas"] >= 2, "one pod would drain to nothing"
    cpu = transceiver.container["resources"]["requests"]["cpu"]
    assert cpu_cores(cpu) > 0, "a CPU utilisation target needs a CPU request"
    budgets = [
        b["spec"]["selector"]["matchLabels"] for b in of_kind(objects, "PodDisruptionBudget")
    ]
    for deployment in deployments.values():
        assert any(selects_labels(b, deployment) for b in budgets), "a Deployment without a PDB"


def selects_labels(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_relays_reach_transceivers(overlay: str) -> None:
    objects = render(overlay)
    relay, transceiver = pod(objects, "relay"), pod(objects, "transceiver")
    (policy,) = of_kind(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert selects_labels(spec["podSelector"]["matchLabels"], transceiver.deployment)
    assert not selects_labels(spec["podSelector"]["matchLabels"], relay.deployment)
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}, "no namespace or address range beside the relays"
    assert selects_labels(source["podSelector"]["matchLabels"], relay.deployment)
    assert not selects_labels(source["podSelector"]["matchLabels"], transceiver.deployment)
    ports = [transceiver.port(p["port"]) for p in rule["ports"]]
    assert ports == [int(transceiver.setting("port"))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_user(overlay: str) -> None:
    for item in pods(render(overlay)):
        assert item.image.stage is not None
        runs = " ".join(i.args for i in item.image.stage.all("RUN"))
        uid = re.search(r"useradd [^&]*--uid (\d+)", runs)
        assert uid, f"{item.name}: the image creates no user with a fixed uid"
        context = item.spec["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == int(uid.group(1))


def test_local_transceivers_are_sized_from_the_capacity_figures() -> None:
    """The local overlay's --max-sessions is the local default for its CPU request
    (os.cpu_count() in a container sees the node, not the pod's share)."""
    transceiver = pod(render("local"), "transceiver")
    resources = transceiver.container["resources"]
    cores = cpu_cores(resources["requests"]["cpu"])
    assert cores >= 1 and cores == int(cores)
    assert int(str(transceiver.value("RELAY_MAX_SESSIONS"))) == local_max_sessions(int(cores))
    assert cpu_cores(resources["limits"]["cpu"]) >= cores
    for overlay in OVERLAYS:
        for item in pods(render(overlay)):
            requests = item.container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), f"{overlay}/{item.name}"
            assert "memory" in item.container["resources"]["limits"], f"{overlay}/{item.name}"
