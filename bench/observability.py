"""What tracing and metrics cost the task agent: `bench.run`'s drain and latency phases with
the agent's observability off (the default: no OTLP endpoint, so nothing is sampled; no
metrics server) and on (every span exported over OTLP/gRPC to a sink in another process,
/metrics served and scraped every 5 s), alternating, `--rounds` of each; medians reported,
next to the task benchmark's results.

    python -m bench.observability [--rounds 2] [--tasks 20000]
"""

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.agent import AgentProcess
from bench.agentry_tasks import AgentryBench
from bench.machine import describe, summary
from bench.servers import Servers, bench_servers, delete_keys, reset_tasks
from dev.embedded import free_port
from libs.common.redis_client import Keys

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"
SCRAPE_EVERY_S = 5.0
BUDGET = 0.10


@contextmanager
def _sink() -> Iterator[tuple[int, list[int]]]:
    """The OTLP sink's port; once it stopped, the list holds the spans it received."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink", str(port)], cwd=ROOT, stdout=subprocess.PIPE
    )
    received: list[int] = []
    try:
        yield port, received
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        received.append(int(out or 0))


@contextmanager
def _scraped(url: str) -> Iterator[None]:
    """Reads /metrics every few seconds, as Prometheus would, while the block runs."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_EVERY_S):
            httpx.get(url, timeout=5.0).raise_for_status()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield
    finally:
        stop.set()
        scraper.join()


def _one(servers: Servers, args: argparse.Namespace, log_dir: Path, on: bool) -> dict[str, Any]:
    metrics_port = free_port()
    with _sink() as (sink_port, received):
        env = (
            {
                "AGENTRY_METRICS_PORT": str(metrics_port),
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                # The SDK's own variables: a root span (and its trace) is kept at this ratio.
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(args.sample_ratio),
            }
            if on
            else {}
        )
        agent = AgentProcess(servers.database_url, servers.redis_url, log_dir, True, env)
        events = Keys(agent.prefix).event_stream()
        figures: dict[str, Any] = {}
        try:
            agent.start()
            bench = AgentryBench(
                agent.channel, servers.database_url, agent.check_alive, agent.keyring()
            )
            scraping = _scraped(f"http://127.0.0.1:{metrics_port}/metrics") if on else None
            with scraping or nullcontext():
                cpu_s = agent.cpu_s()
                figures["drain"] = asyncio.run(bench.drain(args.tasks, args.batch, 180.0))
                figures["drain"]["agent_cpu_s"] = agent.cpu_s() - cpu_s
                reset_tasks(servers.database_url, servers.redis_url, [events])
                figures["latency"] = asyncio.run(bench.latency(args.rate, args.seconds, 180.0))
                reset_tasks(servers.database_url, servers.redis_url, [events])
        finally:
            agent.stop()
            delete_keys(servers.redis_url, f"{agent.prefix}:")
    figures["spans_exported"] = received[0]
    return figures


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    drains = [r["drain"]["tasks_per_s"] for r in runs]
    # CPU per task moves less than throughput with what else the shared machine runs.
    cpu_us = [1e6 * r["drain"]["agent_cpu_s"] / r["drain"]["tasks"] for r in runs]
    p50s = [r["latency"]["submit_to_start_ms"]["p50"] for r in runs]
    p99s = [r["latency"]["submit_to_start_ms"]["p99"] for r in runs]
    return {
        "drain_tasks_per_s": [round(d) for d in drains],
        "drain_median": round(statistics.median(drains)),
        "agent_cpu_us_per_task": [round(c) for c in cpu_us],
        "agent_cpu_us_median": round(statistics.median(cpu_us)),
        "start_p50_ms": p50s,
        "start_p50_median": round(statistics.median(p50s), 2),
        "start_p99_ms": p99s,
        "start_p99_median": round(statistics.median(p99s), 2),
        "spans_exported": [r["spans_exported"] for r in runs],
    }


def _markdown(results: dict[str, Any]) -> str:
    off, on = results["off"], results["on"]
    kept = on["drain_median"] / off["drain_median"]
    cpu = on["agent_cpu_us_median"] / off["agent_cpu_us_median"]
    lines = [
        "# Observability overhead (embedded servers)",
        "",
        f"Run {results['started_at']}: `{results['command']}`.",
        "",
        f"Machine: {results['machine']}.",
        "",
        "Off: no OTLP endpoint (spans not sampled; trace ids still made and passed on), no "
        f"metrics server. On: {100 * results['config']['sample_ratio']:g}% of traces sampled "
        "and their spans exported over OTLP/gRPC to a sink process, /metrics served and "
        f"scraped every {SCRAPE_EVERY_S:.0f} s. Runs alternate off/on; medians.",
        "",
        "| figure | off | on | on / off |",
        "|---|---:|---:|---:|",
        f"| drain, tasks/s (runs: {off['drain_tasks_per_s']} / {on['drain_tasks_per_s']}) "
        f"| {off['drain_median']:,} | {on['drain_median']:,} | {kept:.2f}x |",
        f"| agent CPU per drained task, µs (runs: {off['agent_cpu_us_per_task']} / "
        f"{on['agent_cpu_us_per_task']}) | {off['agent_cpu_us_median']} "
        f"| {on['agent_cpu_us_median']} "
        f"| {on['agent_cpu_us_median'] / off['agent_cpu_us_median']:.2f}x |",
        f"| submit->start p50, ms (200/s) | {off['start_p50_median']} "
        f"| {on['start_p50_median']} | {on['start_p50_median'] / off['start_p50_median']:.2f}x |",
        f"| submit->start p99, ms | {off['start_p99_median']} | {on['start_p99_median']} "
        f"| {on['start_p99_median'] / off['start_p99_median']:.2f}x |",
        f"| spans exported per run | {off['spans_exported']} | {on['spans_exported']} | |",
        "",
        f"Drain throughput with observability on: {100 * (1 - kept):.1f}% lost; agent CPU "
        f"per task {100 * (cpu - 1):+.1f}% (budget: {100 * BUDGET:.0f}% of throughput; the "
        "agent is CPU-bound, so its CPU per task bounds its throughput). The machine is "
        "shared: throughput varies by ±20% run to run, CPU per task much less.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per SubmitTasks call")
    parser.add_argument("--rate", type=float, default=200.0, help="SubmitTask calls per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="of paced SubmitTask calls")
    parser.add_argument(
        "--sample-ratio", type=float, default=1.0, help="share of traces kept when on"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = datetime.now(UTC)
    log_dir = ROOT / ".cache/bench/logs" / f"observability-{started:%Y%m%dT%H%M%S}"
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with bench_servers() as servers:
        machine = summary(describe(servers))
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                log.info("round %d, observability %s", round_ + 1, mode)
                found = _one(servers, args, log_dir / f"{mode}-{round_}", mode == "on")
                runs[mode].append(found)
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.observability", *(argv or sys.argv[1:])]),
        "machine": machine,
        "config": vars(args),
        "runs": runs,
        **{mode: _summary(found) for mode, found in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"observability-embedded-sampled-{100 * args.sample_ratio:g}pct"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = _markdown(results)
    stem.with_suffix(".md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
