"""deploy/monitoring agrees with the servers and with docker-compose.yml.

The metric names come from the servers themselves: a real relay and a real mock transceiver
on loopback take one spoken turn from the load generator, then both ``/metrics`` pages are
scraped. Every PromQL expression of the Grafana dashboard and of the alert rules must name
series those pages export (histograms as ``_bucket``/``_sum``/``_count``, counters inside
``rate``/``increase``), and the provisioning files, the scrape config and the compose
``monitoring`` profile must point at one another. Neither Docker nor Prometheus is needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadgen import LoadOptions, default_speech, run_load
from relay import loop
from tests.docker_files import ROOT, environment, services
from tests.servers import relay_server

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
LINK = "a-link-secret-for-the-scrape"
# Series Prometheus makes itself for every target, not the servers.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# PromQL words that are not series names: functions are followed by "(", these are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


@dataclass
class Exported:
    """What the servers' /metrics pages hold: series names, and the labels seen on each."""

    types: dict[str, str] = field(default_factory=dict)  # series name -> family type
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            names = {
                "counter": [family.name + "_total", family.name + "_created"],
                "histogram": [family.name + s for s in ("_bucket", "_sum", "_count", "_created")],
            }.get(family.type, [family.name])
            for name in names:
                self.types[name] = family.type
            for sample in family.samples:
                self.types.setdefault(sample.name, family.type)
                self.labels.setdefault(sample.name, set()).update(sample.labels)


@pytest.fixture(scope="module")
def exported() -> Exported:
    mock = ("--mock-first-delta-ms", "20", "--mock-words-per-minute", "900")
    env = {"RELAY_BACKEND": "mock", "RELAY_LINK_SECRET": LINK}
    found = Exported()
    with relay_server(*mock, command="transceiver", timeout_s=120, env=env) as transceiver:
        relay_env = {
            "RELAY_TRANSCEIVER": f"ws://127.0.0.1:{transceiver.port}",
            "RELAY_LINK_SECRET": LINK,
            "RELAY_API_KEYS": "",
        }
        with relay_server(command="relay", timeout_s=120, env=relay_env) as relay:
            options = LoadOptions(
                url=f"{relay.ws_base_url}/realtime?model=gpt-realtime",
                turns=1,
                audio=default_speech(),
            )
            figures, _ = loop.run(run_load(options))
            assert figures.turns == 1 and not figures.failed_turns
            found.add(httpx.get(f"{relay.base_url.removesuffix('/v1')}/metrics", timeout=10).text)
            scraped = httpx.get(
                f"{transceiver.base_url}/metrics",
                headers={"Authorization": f"Bearer {LINK}"},
                timeout=10,
            )
            assert scraped.status_code == 200, scraped.text
            found.add(scraped.text)
    assert any(n.startswith("realtime_relay_") for n in found.types)
    assert any(n.startswith("realtime_transceiver_") for n in found.types)
    return found


# --- the expressions ---------------------------------------------------------------------------


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", " ".join(target["expr"].split())


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def expressions() -> list[tuple[str, str]]:
    found = list(dashboard_expressions())
    found += [(f"alerts.yml: {rule['alert']}", " ".join(rule["expr"].split())) for rule in rules()]
    return found


def series_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are not functions, keywords,
    label names (in ``{...}`` or ``by (...)``), strings, numbers or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if match.group(2) is None and match.group(1) not in KEYWORDS:
            names.add(match.group(1))
    return names


def used_labels(expr: str, name: str) -> set[str]:
    labels: set[str] = set()
    for matchers in re.findall(rf"\b{re.escape(name)}\{{([^}}]*)\}}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def test_the_extractor_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, stage) (rate(a_bucket{stage="x", k=~"y"}[5m])))'
        " / clamp_min(sum(rate(b_total[$__rate_interval])), 0.001) > 1 and up == 0"
    )
    assert series_names(expr) == {"a_bucket", "b_total", "up"}
    assert used_labels(expr, "a_bucket") == {"stage", "k"}


def test_there_are_expressions_for_every_asked_figure() -> None:
    text = " ".join(expr for _, expr in dashboard_expressions())
    for series in (
        "realtime_relay_active_sessions",
        "realtime_relay_events_total",
        "realtime_relay_errors_total",
        "realtime_relay_placement_refusals_total",
        "realtime_transceiver_turn_stage_seconds_bucket",
        "realtime_transceiver_usage_tokens_total",
    ):
        assert series in text, f"the dashboard shows no {series}"
    alerting = " ".join(rule["expr"] for rule in rules())
    for series in ("errors_total", "placement_refusals_total", "turn_stage_seconds_bucket"):
        assert series in alerting, f"no alert on {series}"


@pytest.mark.parametrize("where_expr", expressions(), ids=lambda x: x[0])
def test_every_expression_names_exported_series(
    where_expr: tuple[str, str], exported: Exported
) -> None:
    where, expr = where_expr
    names = series_names(expr)
    assert names, f"{where}: no series in {expr}"
    for name in names - PROMETHEUS_OWN:
        assert name in exported.types, f"{where}: the servers export no {name}"
        seen = exported.labels.get(name)
        if seen:  # the label names matched on exist on the series
            assert used_labels(expr, name) <= seen, f"{where}: {name} has labels {seen}"


@pytest.mark.parametrize("where_expr", expressions(), ids=lambda x: x[0])
def test_histograms_and_counters_are_used_as_such(
    where_expr: tuple[str, str], exported: Exported
) -> None:
    where, expr = where_expr
    for name in series_names(expr) - PROMETHEUS_OWN:
        if not name.endswith(COUNTER_SUFFIXES):
            assert exported.types[name] == "gauge", f"{where}: {name}"
            continue
        # A counter's (or a histogram part's) value only grows: read its rate.
        uses = len(re.findall(rf"\b{name}\b", expr))
        rated = len(re.findall(rf"\b(?:rate|irate|increase)\(\s*{name}\b", expr))
        assert uses == rated, f"{where}: {name} outside rate()/increase()"
    for quantile in re.findall(r"histogram_quantile\(([^,]+),(.*)", expr):
        inner = quantile[1]
        assert re.search(r"_bucket\b", inner), f"{where}: histogram_quantile of no buckets"
        by = re.search(r"by\s*\(([^)]*)\)", inner)
        assert by and "le" in re.split(r"[\s,]+", by.group(1)), f"{where}: sum by without le"


# --- the files point at one another ------------------------------------------------------------


def compose_mounts(service: str) -> dict[str, str]:
    """target -> source of a service's bind mounts."""
    found = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def test_the_monitoring_profile_mounts_what_exists() -> None:
    by_name = services()
    for name in ("prometheus", "grafana"):
        assert by_name[name].get("profiles") == ["monitoring"], name
        for source in compose_mounts(name).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: no {source}"
    for name, service in by_name.items():  # the servers never wait for the monitoring
        if "profiles" not in service:
            assert not {"prometheus", "grafana"} & set(service.get("depends_on") or {}), name


def test_prometheus_scrapes_the_servers_with_their_credentials() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text(encoding="utf-8"))
    mounts = compose_mounts("prometheus")
    for path in config["rule_files"]:
        assert mounts.get(path, "").endswith("alerts.yml"), path
    configs = {c["target"]: c["source"] for c in services()["prometheus"]["configs"]}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    relay_env, transceiver_env = (environment(services()[n]) for n in ("relay", "transceiver"))
    (target,) = jobs["relay"]["static_configs"][0]["targets"]
    assert target == f"relay:{relay_env['RELAY_PORT']}"
    (dns,) = jobs["transceiver"]["dns_sd_configs"]
    assert dns["names"] == ["transceiver"] and dns["type"] == "A"
    assert str(dns["port"]) == transceiver_env["RELAY_PORT"]
    top = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["configs"]
    secret = configs[jobs["transceiver"]["authorization"]["credentials_file"]]
    assert top[secret]["content"] == transceiver_env["RELAY_LINK_SECRET"], "not the link secret"
    assert jobs["relay"]["authorization"]["credentials_file"] in configs
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"


def test_grafana_provisions_the_datasource_and_the_dashboards() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in " ".join(services()["prometheus"]["ports"])
    providers = yaml.safe_load((provisioning / "dashboards" / "realtime-relay.yml").read_text())
    mounts = compose_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"].rstrip("/").endswith("grafana/provisioning")
    for provider in providers["providers"]:
        mounted = mounts[provider["options"]["path"]]
        assert (ROOT / mounted).resolve() == DASHBOARDS[0].parent.resolve()
    assert DASHBOARDS
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == source["uid"], panel["title"]
                assert panel["targets"], panel["title"]
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
