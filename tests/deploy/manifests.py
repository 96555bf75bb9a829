"""The rendered manifests, the tools that check them, and small readers shared by the
deploy tests. Every render is done once per session (kubectl kustomize takes ~0.1 s)."""

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
DOCKER = ROOT / "deploy/docker"
OVERLAYS = ("dev", "prod")
CANARIES = ("task-agent", "orchestrator", "analysis", "gateway")
# Component sets an overlay is rendered with: none, each alone, and the pairs that go
# together (KEDA scaling a canary Rollout).
COMPONENT_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("keda-queue-lag",),
    ("prometheus-adapter-queue-lag",),
    *((f"canary-rollout/{service}",) for service in CANARIES),
    ("keda-queue-lag", "canary-rollout/task-agent"),
    ("prometheus-adapter-queue-lag", "canary-rollout/task-agent"),
)
# The Deployment of each service -> its settings class (module, class).
SETTINGS = {
    "task-agent": ("services.task_agent.settings", "TaskAgentSettings"),
    "orchestrator": ("services.orchestrator.settings", "OrchestratorSettings"),
    "analysis": ("services.analysis.settings", "AnalysisSettings"),
    "gateway": ("services.gateway.settings", "GatewaySettings"),
}
# Secrets the manifests read that the operator creates (docs/kubernetes.md names each).
OPERATOR_SECRETS = {
    "agentry-postgres",
    "agentry-redis",
    "agentry-jwt",
    "agentry-data-keys",
    "agentry-webhook-secrets",
    "agentry-hook-secrets",
    "agentry-keda-redis",
    "agentry-canary-token",
}

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations: kubectl kustomize)")
    return found


def tool(name: str, why: str) -> str:
    """A binary from the venv (pip-installed tools) or the PATH, else the test skips."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found


def case_id(overlay: str, components: tuple[str, ...]) -> str:
    return "+".join([overlay, *components])


@functools.cache
def _render_dir(path: Path) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


@functools.cache
def render(overlay: str, components: tuple[str, ...] = ()) -> list[Doc]:
    """The overlay's objects, with the components applied on top as a user's own
    kustomization would: `resources: [overlay]`, `components: [...]`."""
    if not components:
        text = _render_dir(K8S / "overlays" / overlay)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="agentry-kustomize-"))
        rel = functools.partial(os.path.relpath, start=scratch)
        (scratch / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [rel(K8S / "overlays" / overlay)],
                    "components": [rel(K8S / "components" / c) for c in components],
                }
            )
        )
        try:
            text = _render_dir(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def all_cases() -> Iterator[tuple[str, tuple[str, ...]]]:
    for overlay in OVERLAYS:
        for components in COMPONENT_SETS:
            yield overlay, components


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_templates(docs: list[Doc]) -> dict[str, Doc]:
    """Workload name -> its pod template (Deployments, StatefulSets; a Rollout with a
    workloadRef runs its Deployment's template)."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    }


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against labels."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env") or []}


ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")
METRIC = re.compile(r"\bagentry_[a-z0-9_]+")


def metric_names(expr: str) -> set[str]:
    """The agentry_* metric families an expression reads (histogram series folded)."""
    names = set()
    for name in METRIC.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.endswith("_seconds" + suffix):
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def catalogue() -> set[str]:
    """The metric names of docs/metrics.md's table (issue #8's catalogue)."""
    path = ROOT / "docs/metrics.md"
    if not path.exists():
        pytest.skip("docs/metrics.md (the metrics catalogue) is not there yet")
    return set(re.findall(r"^\| `(agentry_[a-z0-9_]+)` \|", path.read_text(), re.M))
