"""`make bench`: the task agent's throughput, latency and memory against their targets, with
Celery as the baseline, on the servers named by REDIS_URL / DATABASE_URL or embedded ones.

    python -m bench.run [--profile] [--celery-pools solo,prefork] [--strict]
"""

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import celery_baseline, profile
from bench.agent import AgentProcess
from bench.agentry_tasks import PARKED_QUEUE, AgentryBench
from bench.cpu import CpuMeter
from bench.machine import describe, summary
from bench.report import baseline_line, cpu_lines, profile_text, rows, table_text, write
from bench.servers import Servers, bench_servers, delete_keys, reset_tasks, server_pids
from libs.common.redis_client import Keys

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"
IDLE_S = 5.0


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per SubmitTasks call")
    parser.add_argument("--rate", type=float, default=200.0, help="SubmitTask calls per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="of paced SubmitTask calls")
    parser.add_argument(
        "--floor-rate", type=float, default=20.0, help="SubmitTask/s of the unloaded latency run"
    )
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds a drain may take")
    parser.add_argument(
        "--celery-pools", default="solo", help="comma-separated: solo, prefork; '' skips Celery"
    )
    parser.add_argument(
        "--profile", action="store_true", help="drain once more under py-spy; print the profile"
    )
    parser.add_argument(
        "--security",
        default="on,off",
        help="on: mTLS, agent tokens and encryption at rest (the targets apply); off: the "
        "same path without them, to show their cost; 'on,off' runs both",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.security = [s for s in args.security.split(",") if s]
    if not args.security or set(args.security) - {"on", "off"}:
        parser.error("--security takes on, off or on,off")
    args.celery_pools = [p for p in args.celery_pools.split(",") if p]
    unknown = set(args.celery_pools) - set(celery_baseline.POOLS)
    if unknown:
        parser.error(f"unknown celery pool(s): {', '.join(sorted(unknown))}")
    return args


def _git() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--", "services", "libs")),
    }


def _agentry(
    servers: Servers, args: argparse.Namespace, log_dir: Path, secure: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every Agentry phase on one agent process; answers the figures and the profile."""
    agent = AgentProcess(servers.database_url, servers.redis_url, log_dir, secure)
    postmaster, redis_pid = server_pids(servers)
    figures: dict[str, Any] = {}
    found_profile = None
    try:
        agent.start()
        parties = {"agent": agent.pid, "postgres": postmaster, "redis": redis_pid}
        log.info("task agent up (pid %d, %s); idle for %.0fs", agent.pid, agent.address, IDLE_S)
        time.sleep(IDLE_S)
        figures["idle_rss_mib"] = round(agent.rss_mib(), 1)
        bench = AgentryBench(
            agent.channel, servers.database_url, agent.check_alive, agent.keyring()
        )
        events = Keys(agent.prefix).event_stream()

        def reset() -> None:
            reset_tasks(servers.database_url, servers.redis_url, [events])
            delete_keys(servers.redis_url, f"{agent.prefix}:{{q:{PARKED_QUEUE}}}")

        log.info("submit alone: %d tasks", args.tasks)
        figures["submit_alone"] = asyncio.run(bench.submit_alone(args.tasks, args.batch))
        reset()
        log.info("drain: %d tasks", args.tasks)
        meter = CpuMeter(parties)
        figures["drain"] = asyncio.run(bench.drain(args.tasks, args.batch, args.deadline))
        figures["drain"]["cpu_s"] = meter.seconds()
        reset()
        log.info("latency: %g SubmitTask/s for %gs", args.rate, args.seconds)
        meter = CpuMeter(parties)
        began = time.perf_counter()
        figures["latency"] = asyncio.run(bench.latency(args.rate, args.seconds, args.deadline))
        figures["latency"]["seconds"] = round(time.perf_counter() - began, 3)
        figures["latency"]["cpu_s"] = meter.seconds()
        reset()
        # The same path nearly unloaded: what is left is the path's own length, not queueing.
        log.info("latency floor: %g SubmitTask/s for 5s", args.floor_rate)
        figures["latency_floor"] = asyncio.run(bench.latency(args.floor_rate, 5.0, args.deadline))
        figures["rss_after_mib"] = round(agent.rss_mib(), 1)
        if args.profile and secure:
            found_profile = {}
            for phase in ("drain", "latency"):
                reset()
                found_profile[phase] = _profiled(phase, agent, bench, args, log_dir)
    except BaseException:
        log.error("the task agent's log: %s", agent.log_path)
        raise
    finally:
        code = agent.stop()
        if code != 0:
            log.warning("the task agent exited with code %d; see %s", code, agent.log_path)
        delete_keys(servers.redis_url, f"{agent.prefix}:")
    return figures, found_profile


def _profiled(
    phase: str, agent: AgentProcess, bench: AgentryBench, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    """The phase once more with py-spy attached (it pauses the process to sample, so these
    runs' figures are not the ones reported)."""
    sampler = profile.Sampler(agent.pid, log_dir / f"{phase}-profile.raw")
    log.info("%s under py-spy", phase)
    sampler.start()
    try:
        time.sleep(1.0)  # py-spy attaches
        began = time.perf_counter()
        if phase == "drain":
            asyncio.run(bench.drain(args.tasks, args.batch, args.deadline))
        else:
            asyncio.run(bench.latency(args.rate, args.seconds, args.deadline))
        wall_s = time.perf_counter() - began
    finally:
        sampler.stop()
    found = profile.summarize(sampler.output, wall_s)
    found["raw"] = str(sampler.output.relative_to(ROOT))
    return found


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    started = datetime.now(UTC)
    code = _git()  # before the agent starts: others may commit while the bench runs
    log_dir = ROOT / ".cache/bench/logs" / started.strftime("%Y%m%dT%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    # Installs come first: a failing one stops the run before anything is started.
    celery_version = celery_baseline.ensure_venv() if args.celery_pools else None
    if args.profile:
        profile.ensure_pyspy()
    with bench_servers() as servers:
        machine = describe(servers)
        log.info("machine: %s", summary(machine))
        runs = {
            mode: _agentry(servers, args, log_dir / f"security-{mode}", mode == "on")
            for mode in args.security
        }
        agentry, found_profile = runs.get("on") or runs["off"]
        security_off = runs["off"][0] if "on" in runs and "off" in runs else None
        celery: dict[str, Any] = {"version": celery_version, "runs": {}}
        for pool in args.celery_pools:
            log.info("celery baseline, %s pool: %d no-ops", pool, args.tasks)
            celery["runs"][pool] = celery_baseline.run_baseline(
                servers, pool, args.tasks, args.deadline, log_dir
            )
    both_embedded = servers.redis_is_ours and servers.postgres_source == "embedded"
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "servers": "embedded" if both_embedded else "external",
        "git": code,
        "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "config": vars(args),
        "security": "on" if "on" in runs else "off",
        "agentry": agentry,
        "agentry_security_off": security_off,
        "celery": celery,
        "profile": found_profile,
        "logs": str(log_dir.relative_to(ROOT)),
    }
    table = rows(results)
    out = [
        f"Task benchmark, {results['servers']} servers: {summary(machine)}",
        "",
        table_text(table),
        "",
        *cpu_lines(results),
        baseline_line(celery),
    ]
    for phase, found in (found_profile or {}).items():
        out += ["", profile_text(phase, found)]
    paths = write(results, table, RESULTS)
    out += ["", f"Written: {', '.join(str(p.relative_to(ROOT)) for p in paths)}"]
    sys.stdout.write("\n".join(out) + "\n")
    missed = [r.figure.strip() for r in table if r.passed is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
