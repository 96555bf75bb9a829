"""Every overlay, alone and with each component, renders with `kubectl kustomize`; every
built-in object is valid against Kubernetes 1.30's schemas (strict: no unknown field), and
every custom resource has what its controller requires."""

import json
from typing import Any

import pytest

from tests.deploy.manifests import (
    ARG,
    CANARIES,
    Doc,
    all_cases,
    case_id,
    named,
    of_kind,
    render,
    selects,
)

CASES = list(all_cases())
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/", "keda.sh/", "argoproj.io/")
KUBERNETES = "1.30.0"


@pytest.mark.parametrize(("overlay", "components"), CASES, ids=[case_id(*c) for c in CASES])
def test_renders_into_one_namespace_without_duplicates(
    overlay: str, components: tuple[str, ...]
) -> None:
    docs = render(overlay, components)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "an object is rendered twice"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "agentry", doc["metadata"]["name"]
    assert {d["metadata"]["name"] for d in of_kind(docs, "Deployment")} >= set(CANARIES)


def test_built_in_objects_are_valid_for_kubernetes_1_30() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in requirements-dev.txt"
    )
    seen: set[str] = set()
    checked = 0
    for case in CASES:
        for doc in render(*case):
            if doc["apiVersion"].startswith(CRD_GROUPS):
                continue
            key = json.dumps(doc, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{case_id(*case)}: {doc['kind']} {doc['metadata']['name']}: {exc}")
            checked += 1
    assert checked > 40


def _crds() -> list[tuple[str, Doc, list[Doc]]]:
    seen: set[str] = set()
    found = []
    for case in CASES:
        docs = render(*case)
        for doc in docs:
            if not doc["apiVersion"].startswith(CRD_GROUPS):
                continue
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                found.append((case_id(*case), doc, docs))
    return found


def _require(doc: Doc, *paths: str) -> None:
    for path in paths:
        node: Any = doc
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, (
                f"{doc['kind']} {doc['metadata']['name']} lacks {path}"
            )
            node = node[part]
        assert node not in (None, "", [], {}) or path.endswith(("selfSigned",)), path


def _check_issuer(doc: Doc, docs: list[Doc]) -> None:
    kinds = {"selfSigned", "ca", "acme", "vault", "venafi"} & set(doc["spec"])
    assert len(kinds) == 1, f"Issuer {doc['metadata']['name']}: one of {kinds}"
    if "ca" in kinds:
        secrets = {c["spec"]["secretName"] for c in of_kind(docs, "Certificate")}
        assert doc["spec"]["ca"]["secretName"] in secrets


def _check_certificate(doc: Doc, docs: list[Doc]) -> None:
    _require(doc, "spec.secretName", "spec.issuerRef.name")
    assert doc["spec"].get("commonName") or doc["spec"].get("dnsNames")
    issuer = doc["spec"]["issuerRef"]
    assert issuer.get("kind", "Issuer") == "Issuer"
    named(docs, "Issuer", issuer["name"])


def _check_service_monitor(doc: Doc, docs: list[Doc]) -> None:
    _require(doc, "spec.selector", "spec.endpoints")
    services = [
        s
        for s in of_kind(docs, "Service")
        if selects(doc["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert services, f"ServiceMonitor {doc['metadata']['name']} selects no Service"
    for endpoint in doc["spec"]["endpoints"]:
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def _check_prometheus_rule(doc: Doc, docs: list[Doc]) -> None:
    _require(doc, "spec.groups")
    for group in doc["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"]
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"]


def _check_scaled_object(doc: Doc, docs: list[Doc]) -> None:
    _require(doc, "spec.scaleTargetRef.name", "spec.triggers")
    target = doc["spec"]["scaleTargetRef"]
    named(docs, target.get("kind", "Deployment"), target["name"])
    assert doc["spec"]["minReplicaCount"] >= 1, "task agents also serve SubmitTask: never 0"
    for trigger in doc["spec"]["triggers"]:
        assert trigger["type"] and trigger["metadata"]
        if trigger["type"] == "redis-streams":
            meta = trigger["metadata"]
            assert meta["stream"] and meta["consumerGroup"]
            assert {"lagCount", "pendingEntriesCount", "streamLength"} & set(meta)
            named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def _check_trigger_authentication(doc: Doc, docs: list[Doc]) -> None:
    for ref in doc["spec"]["secretTargetRef"]:
        assert ref["parameter"] and ref["name"] and ref["key"]


def _check_rollout(doc: Doc, docs: list[Doc]) -> None:
    spec = doc["spec"]
    _require(doc, "spec.selector", "spec.strategy.canary.steps")
    assert ("template" in spec) != ("workloadRef" in spec)
    if "workloadRef" in spec:
        deployment = named(docs, "Deployment", spec["workloadRef"]["name"])
        assert deployment["spec"]["selector"] == spec["selector"]
    steps = spec["strategy"]["canary"]["steps"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [10, 50, 100]
    uses = [spec["strategy"]["canary"].get("analysis")] + [s.get("analysis") for s in steps]
    for use in filter(None, uses):
        passed = {a["name"] for a in use.get("args") or []}
        for ref in use["templates"]:
            template = named(docs, "AnalysisTemplate", ref["templateName"])
            declared = {a["name"]: a for a in template["spec"].get("args") or []}
            assert passed <= set(declared), f"{ref['templateName']} does not declare {passed}"
            missing = {n for n, a in declared.items() if "value" not in a and "valueFrom" not in a}
            assert missing <= passed, f"{ref['templateName']} needs {missing}"


def _check_analysis_template(doc: Doc, docs: list[Doc]) -> None:
    declared = {a["name"] for a in doc["spec"].get("args") or []}
    for metric in doc["spec"]["metrics"]:
        assert metric["name"] and metric["provider"] and metric.get("successCondition")
        used = set(ARG.findall(json.dumps(metric)))
        assert used <= declared, f"{doc['metadata']['name']} uses undeclared {used - declared}"
        web = metric["provider"].get("web")
        if web:
            assert web["url"] and web["jsonPath"]


CHECKS = {
    "Issuer": _check_issuer,
    "Certificate": _check_certificate,
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
    "ScaledObject": _check_scaled_object,
    "TriggerAuthentication": _check_trigger_authentication,
    "Rollout": _check_rollout,
    "AnalysisTemplate": _check_analysis_template,
}


def test_custom_resources_have_what_their_controllers_require() -> None:
    kinds = set()
    for case, doc, docs in _crds():
        assert doc["kind"] in CHECKS, f"{case}: no check for {doc['kind']}"
        _require(doc, "metadata.name", "spec")
        CHECKS[doc["kind"]](doc, docs)
        kinds.add(doc["kind"])
    assert kinds == set(CHECKS)


def test_the_canary_verdict_gates_on_pass_and_aborts_on_fail() -> None:
    docs = render("prod", ("canary-rollout/task-agent",))
    verdict = named(docs, "AnalysisTemplate", "agentry-canary-verdict")
    (metric,) = verdict["spec"]["metrics"]
    assert metric["successCondition"] == 'result.verdict == "PASS"'
    assert metric["failureCondition"] == 'result.verdict == "FAIL"'
    assert metric["failureLimit"] == 0
    web = metric["provider"]["web"]
    assert web["method"] == "POST" and web["url"].endswith("/v1/canary-analyses")
    # The body, its arguments filled in, is what the gateway's route accepts.
    from services.gateway.routes.canary import CanaryIn

    values = {"stable-hash": "5d8f", "canary-hash": "7c4b", "subject": "*", "window-s": "900"}
    body = ARG.sub(lambda m: values[m[1]], web["body"])
    accepted = CanaryIn.model_validate(json.loads(body))
    assert (accepted.baseline, accepted.canary, accepted.window_s) == ("5d8f", "7c4b", 900)
    rollout = named(docs, "Rollout", "task-agent")
    gates = [s for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s]
    assert len(gates) == 2
    for gate in gates:
        assert gate["analysis"]["templates"] == [{"templateName": "agentry-canary-verdict"}]
        hashes = {
            a["name"]: a["valueFrom"]["podTemplateHashValue"] for a in gate["analysis"]["args"]
        }
        assert hashes == {"stable-hash": "Stable", "canary-hash": "Latest"}
    # The cohorts are the pod-template hashes: the agents report theirs as their version.
    container = named(docs, "Deployment", "task-agent")["spec"]["template"]["spec"]["containers"][0]
    version = {e["name"]: e for e in container["env"]}["AGENTRY_VERSION"]
    assert version["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['rollouts-pod-template-hash']"
    )


@pytest.mark.parametrize("service", CANARIES)
def test_a_canary_rollout_takes_over_the_autoscaler(service: str) -> None:
    docs = render("prod", (f"canary-rollout/{service}",))
    hpa = named(docs, "HorizontalPodAutoscaler", service)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": service,
    }
    assert "replicas" not in named(docs, "Deployment", service)["spec"]


def test_queue_lag_autoscaling_replaces_the_cpu_only_task_agent_hpa() -> None:
    keda = render("prod", ("keda-queue-lag",))
    assert "task-agent" not in {
        h["metadata"]["name"] for h in of_kind(keda, "HorizontalPodAutoscaler")
    }
    triggers = named(keda, "ScaledObject", "task-agent")["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"cpu", "redis-streams"}
    adapter = render("prod", ("prometheus-adapter-queue-lag",))
    metrics = named(adapter, "HorizontalPodAutoscaler", "task-agent")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "External"]
    every = render("prod")
    for hpa in of_kind(every, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 2
        assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
