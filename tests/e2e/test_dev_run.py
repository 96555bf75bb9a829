"""`make run` as a newcomer meets it: embedded Redis and Postgres whatever the environment
says, migrations, four services, a dev token that works; and nothing left behind when it
stops, even when it is SIGKILLed."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.embedded import free_port
from dev.processes import alive, descendants
from dev.stack import ROOT

STARTUP_DEADLINE_S = 90


def _wait_gone(pids: set[int], deadline_s: float = 20) -> set[int]:
    deadline = time.monotonic() + deadline_s
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def dev_run() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`python -m dev.run` on free ports, with no REDIS_URL / DATABASE_URL; answers the
    process, the gateway URL and the dev token it printed."""
    state = Path(tempfile.mkdtemp(prefix="agentry-dev-run-"))
    state.chmod(0o755)  # as root, postgres runs as its own user and must reach its data
    gateway = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "libs/protos")]),
        "AGENTRY_DEV_STATE_DIR": str(state),
        "AGENTRY_DEV_GATEWAY_PORT": str(gateway),
        "AGENTRY_DEV_TASK_AGENT_PORT": str(free_port()),
        "AGENTRY_DEV_ORCHESTRATOR_PORT": str(free_port()),
        "AGENTRY_DEV_ANALYSIS_PORT": str(free_port()),
        "AGENTRY_DEV_TASK_AGENT_METRICS_PORT": str(free_port()),
        "AGENTRY_DEV_ORCHESTRATOR_METRICS_PORT": str(free_port()),
        "AGENTRY_DEV_ANALYSIS_METRICS_PORT": str(free_port()),
        "AGENTRY_DEV_GATEWAY_METRICS_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dev.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    token = ""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(r"export AGENTRY_TOKEN=(\S+)", line):
            token = match.group(1)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert token, "dev.run did not print a dev token"
    try:
        yield proc, f"http://127.0.0.1:{gateway}", token
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def _echo_round_trip(gateway: str, token: str) -> None:
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {token}"}) as client:
        task = client.post("/v1/tasks", json={"type": "echo", "payload": {"hi": 1}}).json()
        deadline = time.monotonic() + 15
        while task["state"] != "SUCCEEDED" and time.monotonic() < deadline:
            time.sleep(0.05)
            task = client.get(f"/v1/tasks/{task['id']}").json()
    assert task["state"] == "SUCCEEDED"
    assert task["result"] == {"hi": 1}


def test_make_run_serves_and_stops_cleanly_on_sigterm(dev_run) -> None:
    proc, gateway, token = dev_run
    _echo_round_trip(gateway, token)
    started = descendants(proc.pid)
    assert len(started) >= 6  # redis, postgres (and its workers), four services

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 0
    assert _wait_gone(started) == set()


def test_nothing_survives_a_sigkilled_make_run(dev_run) -> None:
    proc, _, _ = dev_run
    started = descendants(proc.pid)

    proc.kill()

    assert _wait_gone(started) == set()
