"""What a person editing the manifests or the code could break without noticing: env vars
that are no setting, ports that disagree, Secrets nobody makes, selectors that select
nothing, certificates that do not name the identity the RBAC policy knows."""

import copy
import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from libs.common.redis_client import Keys
from services.task_agent.dispatch import GROUP
from tests.deploy.manifests import (
    K8S,
    OPERATOR_SECRETS,
    ROOT,
    SETTINGS,
    Doc,
    all_cases,
    case_id,
    env_of,
    named,
    of_kind,
    pod_templates,
    render,
    selects,
)

CASES = list(all_cases())
IDS = [case_id(*c) for c in CASES]
# Env vars that are not settings: inputs to `$(VAR)` expansion in other values.
NOT_SETTINGS = {"POD_IP"}
# Postgres's and Redis's own env (the dev overlay's StatefulSets).
THIRD_PARTY = {"postgres", "redis"}


def _env_names(settings_class: Any) -> set[str]:
    """The environment variables a settings class reads."""
    prefix = settings_class.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices if str(choice).isupper())
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def _settings_class(service: str) -> Any:
    module, name = SETTINGS[service]
    return getattr(importlib.import_module(module), name)


def _container(docs: list[Doc], service: str) -> Doc:
    (container,) = pod_templates(docs)[service]["spec"]["containers"]
    return container


def _config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c.get("data") or {} for c in of_kind(docs, "ConfigMap")}


@pytest.mark.parametrize(("overlay", "components"), CASES, ids=IDS)
def test_every_env_var_is_a_setting_of_its_service(overlay: str, components: tuple) -> None:
    docs = render(overlay, components)
    config_maps = _config_maps(docs)
    for service in SETTINGS:
        container = _container(docs, service)
        known = _env_names(_settings_class(service))
        names = set(env_of(container))
        for source in container.get("envFrom") or []:
            names.update(config_maps[source["configMapRef"]["name"]])
        unknown = names - known - NOT_SETTINGS
        assert not unknown, f"{service}: {sorted(unknown)} are no {SETTINGS[service][1]} field"
        for name, entry in env_of(container).items():
            for ref in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
                assert ref in names, f"{service}: {name} expands the unset ${ref}"


def _value(container: Doc, name: str) -> str:
    return str(env_of(container)[name]["value"])


def _ports(container: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_ports_agree_between_settings_probes_services_and_clients() -> None:
    docs = render("prod")
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for service in ("task-agent", "orchestrator", "analysis"):
        container = _container(docs, service)
        ports = _ports(container)
        assert int(_value(container, "AGENTRY_GRPC_PORT")) == ports["grpc"]
        assert int(_value(container, "AGENTRY_HEALTH_PORT")) == ports["health"]
        assert int(_value(container, "AGENTRY_METRICS_PORT")) == ports["metrics"] == 9464
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["health"], f"{service} {probe}"
        # gRPC is balanced by the clients: the Service resolves to every ready pod.
        assert services[service]["spec"]["clusterIP"] == "None"
        service_ports = {p["name"]: p for p in services[service]["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == ports["grpc"]
        assert service_ports["metrics"]["port"] == ports["metrics"]
    gateway = _container(docs, "gateway")
    assert int(_value(gateway, "AGENTRY_HTTP_PORT")) == _ports(gateway)["http"] == 8080
    # Metrics on a port of their own, as every service's: the HTTP port is the public one.
    assert int(_value(gateway, "AGENTRY_METRICS_PORT")) == _ports(gateway)["metrics"] == 9464
    gateway_ports = {p["name"]: p["port"] for p in services["gateway"]["spec"]["ports"]}
    assert gateway_ports == {"http": 8080, "metrics": 9464}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["port"] == "http"
    # Every address a service is given names a Service port that serves that service.
    for service in SETTINGS:
        for name, entry in env_of(_container(docs, service)).items():
            if not name.endswith("_ADDRESS"):
                continue
            match = re.fullmatch(r"dns:///([a-z-]+):(\d+)", entry["value"])
            assert match, f"{service} {name}={entry['value']}: dns:///<service>:<port>"
            target = services[match[1]]
            assert int(match[2]) in {p["port"] for p in target["spec"]["ports"]}
            assert target["spec"]["clusterIP"] == "None", "round robin needs every pod's address"


def test_termination_grace_covers_the_drain() -> None:
    docs = render("prod")
    for service in ("task-agent", "orchestrator", "analysis"):
        pod = pod_templates(docs)[service]["spec"]
        container = _container(docs, service)
        grace = float(_value(container, "AGENTRY_SHUTDOWN_GRACE_S"))
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The task agent drains its workers, then its server, each up to the grace.
        drains = 2 if service == "task-agent" else 1
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drains * grace + 5, service
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > drains * grace


@pytest.mark.parametrize(("overlay", "components"), CASES, ids=IDS)
def test_every_secret_and_config_map_referenced_exists_or_is_the_operators(
    overlay: str, components: tuple
) -> None:
    docs = render(overlay, components)
    made = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    made |= {c["spec"]["secretName"] for c in of_kind(docs, "Certificate")}
    config_maps = set(_config_maps(docs))
    secrets: set[str] = set()
    maps: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if key in node:
                    secrets.add(node[key]["name"])
            for key in ("configMapKeyRef", "configMapRef"):
                if key in node:
                    maps.add(node[key]["name"])
            if "secret" in node and isinstance(node["secret"], dict):
                secrets.add(node["secret"]["secretName"])
            if "configMap" in node and isinstance(node["configMap"], dict):
                maps.add(node["configMap"]["name"])
            if "secretTargetRef" in node:
                secrets.update(ref["name"] for ref in node["secretTargetRef"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    assert maps <= config_maps, f"no ConfigMap {sorted(maps - config_maps)}"
    unknown = secrets - made - OPERATOR_SECRETS
    assert not unknown, f"Secrets neither made nor documented as the operator's: {unknown}"


def test_the_operator_secrets_are_documented() -> None:
    guide = (ROOT / "docs/kubernetes.md").read_text()
    for name in sorted(OPERATOR_SECRETS):
        assert f"`{name}`" in guide, f"docs/kubernetes.md does not say how to make {name}"


@pytest.mark.parametrize(("overlay", "components"), CASES, ids=IDS)
def test_selectors_select_the_pods_they_mean(overlay: str, components: tuple) -> None:
    docs = render(overlay, components)
    pods = {name: t["metadata"]["labels"] for name, t in pod_templates(docs).items()}
    ports = {
        name: {p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for name, t in pod_templates(docs).items()
    }

    def matching(selector: Doc) -> set[str]:
        return {name for name, labels in pods.items() if selects(selector, labels)}

    for policy in of_kind(docs, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        targets = matching(policy["spec"]["podSelector"])
        assert targets, f"NetworkPolicy {name} selects no pod"
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert matching(peer["podSelector"]), f"{name}: a source selects no pod"
            for port in rule.get("ports") or []:
                for target in targets:
                    assert port["port"] in ports[target], f"{name}: {target} has no {port}"
        for rule in policy["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    peers = matching(peer["podSelector"])
                    assert peers, f"{name}: a destination selects no pod"
                    for port in rule.get("ports") or []:
                        assert all(port["port"] in ports[p] for p in peers), f"{name}: {port}"
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in of_kind(docs, kind):
            selector = doc["spec"]["selector"]
            selector = selector if kind != "Service" else {"matchLabels": selector}
            assert matching(selector), f"{kind} {doc['metadata']['name']} selects no pod"
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"], labels)
        for spread in workload["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(spread["labelSelector"], labels)
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        named(docs, target["kind"], target["name"])


# A settings field naming another service's address -> the service it names.
CALLEES = {
    "task_service_address": "task-agent",
    "workflow_service_address": "orchestrator",
    "analysis_service_address": "analysis",
    "registry_address": "orchestrator",
}
GRPC_PORTS = {"task-agent": 50051, "orchestrator": 50052, "analysis": 50053}


def _calls() -> set[tuple[str, str]]:
    """Who calls whom, from the code: each service's *_address settings, and the
    orchestrator's health checks of every gRPC agent."""
    calls = {("orchestrator", callee) for callee in GRPC_PORTS}
    for service in SETTINGS:
        fields = _settings_class(service).model_fields
        unknown = {f for f in fields if f.endswith("_address")} - set(CALLEES)
        assert not unknown, f"{service}: which service does {unknown} name? (CALLEES)"
        calls.update((service, CALLEES[f]) for f in fields if f in CALLEES)
    return calls


def test_every_service_is_told_where_the_services_it_calls_are() -> None:
    docs = render("prod")
    for service in SETTINGS:
        fields = _settings_class(service).model_fields
        env = env_of(_container(docs, service))
        for field in set(fields) & set(CALLEES):
            name = f"AGENTRY_{field.upper()}"
            assert name in env, f"{service} would call {fields[field].default}: set {name}"
            assert env[name]["value"] == f"dns:///{CALLEES[field]}:{GRPC_PORTS[CALLEES[field]]}"


def test_the_network_policies_allow_exactly_the_calls_the_services_make() -> None:
    docs = render("prod")
    pods = {name: t["metadata"]["labels"] for name, t in pod_templates(docs).items()}

    def matching(selector: Doc) -> list[str]:
        return [n for n, labels in pods.items() if selects(selector, labels)]

    ingress, egress = set(), set()
    for policy in of_kind(docs, "NetworkPolicy"):
        for target in matching(policy["spec"]["podSelector"]):
            for rule in policy["spec"].get("ingress") or []:
                for peer in rule.get("from") or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        for source in matching(peer["podSelector"]):
                            if any(p["port"] == GRPC_PORTS.get(target) for p in rule["ports"]):
                                ingress.add((source, target))
            for rule in policy["spec"].get("egress") or []:
                for peer in rule.get("to") or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        for callee in matching(peer["podSelector"]):
                            if any(p["port"] == GRPC_PORTS.get(callee) for p in rule["ports"]):
                                egress.add((target, callee))
    calls = _calls()
    assert ingress == calls, f"ingress allows {ingress - calls}, refuses {calls - ingress}"
    assert egress == calls, f"egress allows {egress - calls}, refuses {calls - egress}"


def test_only_the_monitoring_namespace_reaches_the_metrics_ports() -> None:
    """Metrics name task types, queues and versions: no public path to them, the gateway's
    included."""
    docs = render("prod")
    namespace = {"kubernetes.io/metadata.name": "monitoring"}
    monitoring = {"namespaceSelector": {"matchLabels": namespace}}
    scraped = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")  # none: every port
            if ports is None or any(p["port"] == 9464 for p in ports):
                assert rule.get("from") == [monitoring], policy["metadata"]["name"]
                scraped.add(policy["metadata"]["name"])
    assert scraped == set(SETTINGS)


def test_each_certificate_names_its_service_s_identity() -> None:
    docs = render("prod")
    identities = tomllib.loads((ROOT / "libs/common/rbac.toml").read_text())["identities"]
    certificates = {
        c["spec"]["commonName"]: c
        for c in of_kind(docs, "Certificate")
        if not c["spec"].get("isCA")
    }
    assert set(certificates) == set(identities)
    for service in SETTINGS:
        certificate = certificates[service]
        assert {service, f"{service}.agentry.svc"} <= set(certificate["spec"]["dnsNames"])
        assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
        volumes = {v["name"]: v for v in pod_templates(docs)[service]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
        container = _container(docs, service)
        mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["tls"]
        assert _value(container, "AGENTRY_TLS_DIR") == mount


def test_every_pod_is_locked_down_and_sized() -> None:
    for overlay in ("dev", "prod"):
        for name, template in pod_templates(render(overlay)).items():
            spec = template["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            assert spec.get("automountServiceAccountToken") is False, name
            for container in spec["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, name
                assert context["allowPrivilegeEscalation"] is False, name
                assert context["capabilities"]["drop"] == ["ALL"], name
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                if name not in THIRD_PARTY:
                    assert "/tmp" in mounts, f"{name}: a writable /tmp"


def test_keda_reads_the_streams_and_group_the_task_agents_use() -> None:
    docs = render("prod", ("keda-queue-lag",))
    prefix = _config_maps(docs)
    prefix_value = next(iter(v for v in prefix.values() if "AGENTRY_REDIS_PREFIX" in v))
    keys = Keys(prefix_value["AGENTRY_REDIS_PREFIX"])
    streams = {
        t["metadata"]["stream"]: t["metadata"]["consumerGroup"]
        for t in named(docs, "ScaledObject", "task-agent")["spec"]["triggers"]
        if t["type"] == "redis-streams"
    }
    assert streams == {keys.queue_stream("default", p): GROUP for p in (1, 2, 3)}


def test_the_adapter_serves_the_metric_the_hpa_reads() -> None:
    values = yaml.safe_load(
        (K8S / "components/prometheus-adapter-queue-lag/adapter-values.yaml").read_text()
    )
    (rule,) = values["rules"]["external"]
    served = rule["name"]["as"]
    hpa = named(
        render("prod", ("prometheus-adapter-queue-lag",)), "HorizontalPodAutoscaler", "task-agent"
    )
    (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert external["metric"]["name"] == served == "agentry_queue_oldest_age_seconds"
    assert "queue" in external["metric"]["selector"]["matchLabels"]
    assert rule["metricsQuery"].startswith("max by (queue)")


def test_the_dev_overlay_runs_its_own_postgres_and_redis() -> None:
    docs = render("dev")
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    assert {"agentry-postgres", "agentry-redis"} <= set(secrets)
    statefulsets = {s["metadata"]["name"] for s in of_kind(docs, "StatefulSet")}
    assert statefulsets == {"postgres", "redis"}
    prod = render("prod")
    assert not of_kind(prod, "StatefulSet") and not of_kind(prod, "Secret")


def test_the_dockerignore_lets_in_what_the_images_copy() -> None:
    patterns = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for dockerfile in (ROOT / "deploy/docker").glob("*.Dockerfile"):
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), re.M):
            assert any(p[1:].rstrip("/") == source.rstrip("/") for p in patterns), (
                f"{dockerfile.name} copies {source}, which .dockerignore leaves out"
            )
            assert Path(ROOT / source).exists(), source


def test_a_track_canary_deployment_is_served_beside_the_stable_one() -> None:
    """The plain canary without Argo (docs/kubernetes.md): a copy of the Deployment with
    `track: canary` and the new version. The Service, the NetworkPolicy and the PDB take its
    pods; the stable Deployment does not adopt them."""
    docs = render("prod")
    stable = named(docs, "Deployment", "task-agent")
    canary = copy.deepcopy(stable)
    canary["metadata"]["name"] = "task-agent-canary"
    canary["spec"]["replicas"] = 1
    canary["spec"]["selector"]["matchLabels"]["track"] = "canary"
    labels = canary["spec"]["template"]["metadata"]["labels"]
    labels.update({"track": "canary", "app.kubernetes.io/version": "0.2.0"})
    canary["spec"]["template"]["spec"]["containers"][0]["image"] = "agentry/task-agent:0.2.0"
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(canary, "1.30.0", strict=True)
    assert not selects(stable["spec"]["selector"], labels)
    assert selects(canary["spec"]["selector"], labels)
    assert selects(
        {"matchLabels": named(docs, "Service", "task-agent")["spec"]["selector"]}, labels
    )
    assert selects(named(docs, "NetworkPolicy", "task-agent")["spec"]["podSelector"], labels)
    assert selects(named(docs, "PodDisruptionBudget", "task-agent")["spec"]["selector"], labels)
    version = env_of(canary["spec"]["template"]["spec"]["containers"][0])["AGENTRY_VERSION"]
    assert (
        version["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['app.kubernetes.io/version']"
    )
