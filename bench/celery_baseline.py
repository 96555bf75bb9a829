"""The Celery baseline: Celery 5.x in a virtualenv of its own (.cache/bench-celery, made on
first use and reused), one worker process on the same Redis, 20,000 no-op tasks."""

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.servers import Servers, delete_keys, redis_db_url, server_pids
from dev.embedded import death_signal_hook
from dev.processes import children

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache/bench-celery"
REQUIREMENT = "celery[redis]>=5.7,<6"
POOLS = {
    # One process that takes messages and runs them itself.
    "solo": ["--pool=solo", "--concurrency=1"],
    # Celery's default pool with one child: a parent process that takes messages and one
    # child process that runs them.
    "prefork": ["--pool=prefork", "--concurrency=1"],
}


def ensure_venv() -> str:
    """Celery's version, installing it first if the virtualenv is not there yet."""
    python = VENV / "bin/python"
    if not (VENV / "bin/celery").exists():
        log.info("installing %s into %s", REQUIREMENT, VENV)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, REQUIREMENT], check=True, timeout=600)
    out = subprocess.run(
        [str(python), "-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    celery_version, kombu_version = out.stdout.split()
    return f"celery {celery_version}, kombu {kombu_version}"


def run_baseline(
    servers: Servers, pool: str, n: int, deadline_s: float, log_dir: Path
) -> dict[str, Any]:
    """Two drains by one worker:
    - full queue: all `n` no-ops are enqueued before the worker starts; timed from its first
      no-op to its last (the worker's own speed, its start-up left out);
    - end to end: enqueued while the warm worker drains, timed from the first enqueue to the
      last no-op, which is how the Agentry drain is timed."""
    # A Redis of our own gets a database of its own; a shared one a queue and key prefix.
    broker = redis_db_url(servers.redis_url, 1) if servers.redis_is_ours else servers.redis_url
    tag = uuid.uuid4().hex[:10]
    prefix = f"bench-celery-{tag}:"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # bench.celery_app only; none of Agentry's code
        "BENCH_CELERY_BROKER": broker,
        "BENCH_CELERY_QUEUE": f"bench-celery-{tag}",
        "BENCH_CELERY_PREFIX": prefix,
    }

    def driver(*args: object) -> dict[str, Any]:
        cmd = [str(VENV / "bin/python"), "-m", "bench.celery_driver", *map(str, args)]
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=deadline_s + 60,
            preexec_fn=death_signal_hook(signal.SIGTERM),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"celery driver {args[0]} failed:\n{done.stderr[-3000:]}")
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    worker: subprocess.Popen[bytes] | None = None
    try:
        full = driver("enqueue", n, f"{prefix}full")
        enqueue_s = full["enqueued_at"] - full["began_at"]
        worker = _start_worker(pool, env, log_dir / f"celery-{pool}.log")
        parties = {"celery_worker": worker.pid, "redis": server_pids(servers)[1]}
        meter = CpuMeter(parties)  # the worker's start-up included
        drained = driver("wait", f"{prefix}full", deadline_s)
        full_s = drained["finished_at"] - drained["first_at"]
        full_cpu = meter.seconds()
        meter = CpuMeter(parties)
        e2e = driver("enqueue", n, f"{prefix}e2e")
        e2e_drained = driver("wait", f"{prefix}e2e", deadline_s)
        e2e_s = e2e_drained["finished_at"] - e2e["began_at"]
        e2e_cpu = meter.seconds()
    finally:
        if worker is not None:
            _stop(worker)
        delete_keys(broker, prefix)
    ran = (drained["noops_ran"], e2e_drained["noops_ran"] - drained["noops_ran"])
    if ran != (n, n):
        raise RuntimeError(f"celery ran {ran} no-ops, expected {n} in each drain")
    return {
        "pool": pool,
        "worker_args": " ".join(POOLS[pool]),
        "tasks": n,
        "enqueue_alone_seconds": round(enqueue_s, 3),
        "enqueue_alone_tasks_per_s": n / enqueue_s,
        "full_queue_seconds": round(full_s, 3),
        "full_queue_tasks_per_s": n / full_s,
        "seconds": round(e2e_s, 3),
        "tasks_per_s": n / e2e_s,
        "enqueue_during_drain_seconds": round(e2e["enqueued_at"] - e2e["began_at"], 3),
        "full_queue_cpu_s": full_cpu,
        "cpu_s": e2e_cpu,
    }


def _start_worker(pool: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [
        str(VENV / "bin/celery"), "-A", "bench.celery_app", "worker", *POOLS[pool],
        "--queues", env["BENCH_CELERY_QUEUE"], "--loglevel", "WARNING",
        # Cluster chatter a lone worker does not need; it does not touch the task path.
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "wb") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=death_signal_hook(signal.SIGTERM),
        )  # fmt: skip


def _stop(worker: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL; then any pool child still alive."""
    children = _children(worker.pid)
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("celery worker (pid %d) still up after %.0fs, killing it", worker.pid, grace_s)
        worker.kill()
        worker.wait()
    for pid, comm in children.items():
        if _comm(pid) == comm:
            os.kill(pid, signal.SIGKILL)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return None


def _children(parent: int) -> dict[int, str]:
    return {pid: comm for pid in children(parent) if (comm := _comm(pid))}
