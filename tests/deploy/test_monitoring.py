"""The alert rules pass `promtool check rules` and their unit tests; the rules, the
dashboard, the canary analysis and the autoscalers read only metrics the catalogue
(docs/metrics.md) lists."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import ARG, K8S, Doc, catalogue, metric_names, named, of_kind, render

MONITORING = K8S / "base/monitoring"
DASHBOARD = MONITORING / "agentry-dashboard.json"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: `make debs`)")
    return found


def _rules() -> Doc:
    return named(render("prod"), "PrometheusRule", "agentry")


def _write_rules(directory: Path) -> Path:
    path = directory / "agentry-rules.yaml"
    path.write_text(yaml.safe_dump(_rules()["spec"]))
    return path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(_write_rules(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_runs_the_rules_unit_tests(tmp_path: Path) -> None:
    _write_rules(tmp_path)
    shutil.copy(MONITORING / "alerts-test.yaml", tmp_path)
    done = subprocess.run(
        [_promtool(), "test", "rules", "alerts-test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    alerts = {r["alert"] for g in _rules()["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "AgentryTaskFailureRateHigh",
        "AgentryDeadLettersGrowing",
        "AgentryQueueLagHigh",
        "AgentryNoHealthyTaskAgents",
        "AgentryEventConsumerLagHigh",
        "AgentryCertificateExpiringSoon",
        "AgentryGrpcErrorRateHigh",
    } <= alerts


def test_the_canary_error_rate_query_is_valid_promql(tmp_path: Path) -> None:
    template = named(
        render("prod", ("canary-rollout/gateway",)), "AnalysisTemplate", "agentry-error-rate"
    )
    query = template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    rules = {"groups": [{"name": "q", "rules": [{"record": "q", "expr": ARG.sub("5d8f", query)}]}]}
    path = tmp_path / "query.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def test_the_dashboard_is_a_grafana_dashboard_the_sidecar_loads() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert "datasource" in {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p.get("id") for p in dashboard["panels"] if p.get("id") is not None]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
    config_map = named(render("prod"), "ConfigMap", "agentry-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["agentry-dashboard.json"]) == dashboard


def test_everything_reads_only_catalogued_metrics() -> None:
    known = catalogue()
    used: dict[str, set[str]] = {}

    def note(where: str, expr: str) -> None:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)

    for group in _rules()["spec"]["groups"]:
        for rule in group["rules"]:
            note(rule.get("alert") or rule["record"], rule["expr"])
    for expr in _dashboard_exprs():
        note("dashboard", expr)
    for template in of_kind(render("prod", ("canary-rollout/task-agent",)), "AnalysisTemplate"):
        note(template["metadata"]["name"], json.dumps(template["spec"]))
    adapter: Any = yaml.safe_load(
        (K8S / "components/prometheus-adapter-queue-lag/adapter-values.yaml").read_text()
    )
    note("prometheus-adapter", json.dumps(adapter))
    for hpa in of_kind(
        render("prod", ("prometheus-adapter-queue-lag",)), "HorizontalPodAutoscaler"
    ):
        note(f"hpa {hpa['metadata']['name']}", json.dumps(hpa["spec"]))
    unknown = {name: where for name, where in used.items() if name not in known}
    assert not unknown, f"not in docs/metrics.md: {unknown}"
    # The rules cover the catalogue's signals the issue names.
    assert {
        "agentry_tasks_finished_total",
        "agentry_dead_letters_total",
        "agentry_queue_oldest_age_seconds",
        "agentry_agents",
        "agentry_event_consumer_lag",
        "agentry_certificate_expiry_timestamp_seconds",
    } <= set(used)
