"""The orchestrator's figures against their targets: runs of a chain of echo steps per second,
the per-step orchestration overhead, and one wide fan-out. One task agent and one
orchestrator run as processes (mTLS, tokens and encryption on), on the bench's own database
and a Redis prefix of their own; the servers are the ones named by REDIS_URL / DATABASE_URL,
else embedded ones. Timings come from the tables: both services stamp rows with the database
clock.

    python -m bench.workflows [--runs 1000] [--in-flight 50] [--fanout 1000] [--strict]
"""

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg

from agentry.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from bench.cpu import CpuMeter
from bench.machine import describe, summary
from bench.report import Row, table_text
from bench.run import _git
from bench.servers import Servers, bench_servers, delete_keys, server_pids
from bench.stats import distribution
from dev import secrets
from dev.embedded import free_port
from dev.stack import ROOT, Ports, Stack
from libs.common.channels import open_channel
from libs.common.identity import AgentIdentity
from libs.common.migrations import upgrade
from libs.common.tokens import mint

log = logging.getLogger("bench")

RESULTS = ROOT / "bench/results"
ORCHESTRATOR_MIGRATIONS = ROOT / "services/orchestrator/migrations"
SERVICES = ("task_agent", "orchestrator")  # in start order: the orchestrator calls the agent
_POLL_S = 0.02
_STALL_S = 30.0  # no run ended for this long: something is stuck
_WARMUP_RUNS = 20


def chain(name: str, steps: int) -> dict[str, Any]:
    """`steps` echo steps, each depending on the one before and taking its output."""
    first = {"name": "s1", "type": "echo", "input": {"n": {"$ref": "input.n"}}}
    rest = [
        {
            "name": f"s{k}",
            "type": "echo",
            "depends_on": [f"s{k - 1}"],
            "input": {"prev": {"$ref": f"steps.s{k - 1}.output"}},
        }
        for k in range(2, steps + 1)
    ]
    return {"name": name, "steps": [first, *rest]}


def fan_out(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {
                "name": "each",
                "type": "echo",
                "for_each": {"$ref": "input.items"},
                "input": {"i": {"$ref": "item"}},
            }
        ],
    }


class Platform:
    """A task agent and an orchestrator sharing a Redis prefix, so the orchestrator follows
    the agent's task events, as `make run` starts them."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self._secrets = secrets.ensure(ROOT / ".cache/bench/secrets")
        self.prefix = f"bench-wf-{uuid.uuid4().hex[:10]}"
        self.log_dir = log_dir
        agent_port = free_port()
        orchestrator_port = free_port()
        while orchestrator_port == agent_port:
            orchestrator_port = free_port()
        self.ports = Ports(task_agent=agent_port, orchestrator=orchestrator_port)
        # One Stack per service: each needs its own AGENTRY_GRPC_PORT and instance.
        self._stacks = {
            service: Stack(
                database_url,
                redis_url,
                self.ports,
                self._secrets,
                env={
                    "AGENTRY_REDIS_PREFIX": self.prefix,
                    "AGENTRY_GRPC_PORT": str(self.ports.grpc(service)),
                    "AGENTRY_INSTANCE": f"{self.prefix}-{service}",
                    "AGENTRY_LOG_LEVEL": "WARNING",
                    # The bench migrated its database already; the processes are as in production.
                    "AGENTRY_MIGRATE_ON_START": "false",
                },
                log_dir=log_dir,
            )
            for service in SERVICES
        }

    def start(self, timeout_s: float = 60.0) -> None:
        for service in SERVICES:
            self._stacks[service].start_one(service)
            self._stacks[service].wait_ready(timeout_s)

    def pid(self, service: str) -> int:
        return self._stacks[service].processes[service].pid

    def check_alive(self) -> None:
        for service, stack in self._stacks.items():
            code = stack.processes[service].poll() if service in stack.processes else None
            if code is not None:
                raise RuntimeError(
                    f"{service} exited with code {code}; see {self.log_dir / f'{service}.log'}"
                )

    def channel(self) -> grpc.aio.Channel:
        """As the gateway relaying an admin (RegisterWorkflow needs one)."""
        admin = mint(
            self._secrets.jwt_private_key.read_bytes(), "bench", "admin", "agentry-gateway", 3600
        )
        gateway = AgentIdentity(self._secrets.tls_dir("gateway"), "gateway")
        return open_channel(f"127.0.0.1:{self.ports.orchestrator}", "orchestrator", gateway, admin)

    def stop(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for service in reversed(SERVICES):
            if service in self._stacks[service].processes:
                codes.update(self._stacks[service].stop(grace_s=15.0))
        return codes


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


async def _states(conn: psycopg.AsyncConnection[Any], workflow: str) -> dict[str, int]:
    rows = await (
        await conn.execute(
            "SELECT state, count(*) FROM orchestrator.runs WHERE workflow = %s GROUP BY state",
            (workflow,),
        )
    ).fetchall()
    return {state: count for state, count in rows}


async def _wait_runs(
    conn: psycopg.AsyncConnection[Any],
    workflow: str,
    n: int,
    deadline_s: float,
    check: Callable[[], None],
) -> float:
    """Polls until `n` runs of `workflow` have SUCCEEDED; answers the perf_counter time it saw
    them. Raises on a failed run, a dead process (`check`), the deadline, or a stall."""
    deadline = time.monotonic() + deadline_s
    last, moved_at = -1, time.monotonic()
    while True:
        states = await _states(conn, workflow)
        done = states.get("SUCCEEDED", 0)
        if done >= n:
            return time.perf_counter()
        if states.get("FAILED") or states.get("CANCELLED"):
            row = await (
                await conn.execute(
                    "SELECT error FROM orchestrator.runs WHERE workflow = %s"
                    " AND state <> 'RUNNING' AND state <> 'SUCCEEDED' LIMIT 1",
                    (workflow,),
                )
            ).fetchone()
            raise RuntimeError(f"runs of {workflow} ended badly: {states}; one said {row}")
        check()
        now = time.monotonic()
        if done != last:
            last, moved_at = done, now
        if now > deadline or now - moved_at > _STALL_S:
            tasks = await (
                await conn.execute("SELECT state, count(*) FROM tasks.tasks GROUP BY state")
            ).fetchall()
            why = f"in {deadline_s:.0f}s" if now > deadline else f"(none for {_STALL_S:.0f}s)"
            raise TimeoutError(
                f"not all {n} runs of {workflow} succeeded {why}: runs {states}, "
                f"tasks {dict(tasks)}"
            )
        await asyncio.sleep(_POLL_S)


async def _start_runs(
    stub: workflows_pb2_grpc.WorkflowServiceStub,
    workflow: str,
    inputs: Sequence[Any],
    in_flight: int,
) -> list[float]:
    """StartRun for each input, `in_flight` calls at a time; answers their round trips (ms)."""
    pending = iter(inputs)
    round_trips: list[float] = []

    async def caller() -> None:
        for run_input in pending:
            sent = time.perf_counter()
            await stub.StartRun(
                workflows_pb2.StartRunRequest(
                    workflow=workflow, input=json.dumps(run_input).encode()
                ),
                timeout=60,
            )
            round_trips.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return round_trips


async def _register(stub: workflows_pb2_grpc.WorkflowServiceStub, definition: Any) -> None:
    await stub.RegisterWorkflow(
        workflows_pb2.RegisterWorkflowRequest(
            name=definition["name"], definition=json.dumps(definition).encode()
        ),
        timeout=30,
    )


async def _chain_steps(conn: psycopg.AsyncConnection[Any], workflow: str) -> dict[str, Any]:
    """Where the time between two steps of a chain goes, over every run of `workflow`:
    - overhead: the step's dependency's task finished → the step's task started;
    - noticed: that task finished → the orchestrator began advancing the run (its
      transaction's now(), which it writes as the step's finished_at);
    - submitted: began advancing → the next task stored by the task agent;
    - queued: stored → started, in the task agent.
    And `first`: run created → its first task started."""
    rows = await (
        await conn.execute(
            "SELECT st.run_id, st.step, st.finished_at, t.created_at, t.started_at,"
            " t.finished_at, r.created_at FROM orchestrator.step_tasks st"
            " JOIN orchestrator.runs r ON r.id = st.run_id"
            " JOIN tasks.tasks t ON t.id = st.task_id WHERE r.workflow = %s",
            (workflow,),
        )
    ).fetchall()
    by_run: dict[uuid.UUID, dict[int, Any]] = defaultdict(dict)
    for row in rows:
        by_run[row[0]][int(row[1].removeprefix("s"))] = row
    parts: dict[str, list[float]] = defaultdict(list)
    for steps in by_run.values():
        _, _, _, _, first_started, _, run_created = steps[1]
        parts["first"].append(_ms(first_started, run_created))
        for k in range(2, len(steps) + 1):
            _, _, seen_end, _, _, prev_finished, _ = steps[k - 1]
            _, _, _, created, started, _, _ = steps[k]
            parts["overhead"].append(_ms(started, prev_finished))
            parts["noticed"].append(_ms(seen_end, prev_finished))
            parts["submitted"].append(_ms(created, seen_end))
            parts["queued"].append(_ms(started, created))
    return {f"{name}_ms": distribution(samples) for name, samples in parts.items()}


class WorkflowBench:
    def __init__(self, platform: Platform, database_url: str, deadline_s: float) -> None:
        self._platform = platform
        self._database_url = database_url
        self._deadline_s = deadline_s

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._database_url, autocommit=True)

    async def register(self, *definitions: dict[str, Any]) -> None:
        async with self._platform.channel() as channel:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            for definition in definitions:
                await _register(stub, definition)

    async def chain_runs(self, workflow: str, steps: int, n: int, in_flight: int) -> dict[str, Any]:
        """`n` runs of a `steps`-step chain started `in_flight` at a time, from the first StartRun until all have
        SUCCEEDED; the figures from the runs' own timestamps."""
        inputs = [{"n": i} for i in range(n)]
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            began = time.perf_counter()
            starting = asyncio.create_task(_start_runs(stub, workflow, inputs, in_flight))

            def check() -> None:
                self._platform.check_alive()
                if starting.done() and starting.exception() is not None:
                    starting.result()  # raises the starter's error

            try:
                seen_at = await _wait_runs(conn, workflow, n, self._deadline_s, check)
            finally:
                if not starting.done():
                    starting.cancel()
            round_trips = await starting
            row = await (
                await conn.execute(
                    "SELECT min(created_at), max(created_at), max(finished_at)"
                    " FROM orchestrator.runs WHERE workflow = %s",
                    (workflow,),
                )
            ).fetchone()
            assert row is not None
            durations = await (
                await conn.execute(
                    "SELECT extract(epoch FROM finished_at - created_at) * 1000"
                    " FROM orchestrator.runs WHERE workflow = %s",
                    (workflow,),
                )
            ).fetchall()
            gaps = await _chain_steps(conn, workflow)
        seconds = (row[2] - row[0]).total_seconds()
        return {
            "runs": n,
            "in_flight": in_flight,
            "seconds": round(seconds, 3),
            "runs_per_s": n / seconds,
            "steps": steps,
            "steps_per_s": n * steps / seconds,
            "client_seconds": round(seen_at - began, 3),
            "client_runs_per_s": n / (seen_at - began),
            "start_seconds": round((row[1] - row[0]).total_seconds(), 3),
            "start_run_rpc_ms": distribution(round_trips),
            "run_ms": distribution([float(d[0]) for d in durations]),
            **gaps,
        }

    async def fan_out(self, workflow: str, width: int) -> dict[str, Any]:
        """One run over `width` items: StartRun sent → the run seen SUCCEEDED, with the
        milestones in between from the tables."""
        request = workflows_pb2.StartRunRequest(
            workflow=workflow, input=json.dumps({"items": list(range(width))}).encode()
        )
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            began = time.perf_counter()
            reply = await stub.StartRun(request, timeout=60)
            start_rpc_ms = (time.perf_counter() - began) * 1000
            seen_at = await _wait_runs(
                conn, workflow, 1, self._deadline_s, self._platform.check_alive
            )
            row = await (
                await conn.execute(
                    "SELECT r.created_at, max(t.created_at), min(t.started_at),"
                    " max(t.finished_at), max(st.finished_at), r.finished_at, count(t.id)"
                    " FROM orchestrator.runs r"
                    " JOIN orchestrator.step_tasks st ON st.run_id = r.id"
                    " JOIN tasks.tasks t ON t.id = st.task_id"
                    " WHERE r.id = %s GROUP BY r.id",
                    (reply.run.id,),
                )
            ).fetchone()
        assert row is not None
        created, stored, first_started, tasks_done, recorded, finished, count = row
        if count != width:
            raise RuntimeError(f"the fan-out ran {count} tasks, not {width}")
        return {
            "width": width,
            "client_ms": (seen_at - began) * 1000,
            "start_run_rpc_ms": start_rpc_ms,
            "run_ms": _ms(finished, created),
            "last_task_stored_ms": _ms(stored, created),
            "first_task_started_ms": _ms(first_started, created),
            "last_task_finished_ms": _ms(tasks_done, created),
            "last_end_recorded_ms": _ms(recorded, created),
        }

    async def one_at_a_time(self, workflow: str, n: int) -> dict[str, Any]:
        """`n` runs, each started once the one before has SUCCEEDED: the step gaps of an
        orchestrator with nothing else to do."""
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
            for i in range(n):
                await _start_runs(stub, workflow, [{"n": i}], 1)
                await _wait_runs(conn, workflow, i + 1, 30.0, self._platform.check_alive)
            return {"runs": n, **(await _chain_steps(conn, workflow))}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="runs of the chain")
    parser.add_argument("--steps", type=int, default=5, help="echo steps in the chain")
    parser.add_argument("--in-flight", type=int, default=50, help="StartRun calls at a time")
    parser.add_argument("--fanout", type=int, default=1000, help="items of the fan-out run")
    parser.add_argument(
        "--serial-runs", type=int, default=20, help="chain runs one at a time (unloaded gaps)"
    )
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds a phase may take")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 2 or args.in_flight < 1 or args.fanout < 1:
        parser.error("--runs, --in-flight and --fanout take 1 or more, --steps 2 or more")
    return args


def _measure(platform: Platform, servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    bench = WorkflowBench(platform, servers.database_url, args.deadline)
    names = {
        "warmup": f"warmup{args.steps}",
        "chain": f"chain{args.steps}",
        "serial": f"serial{args.steps}",
        "fan_out": f"fan{args.fanout}",
    }
    asyncio.run(
        bench.register(
            *(chain(names[k], args.steps) for k in ("warmup", "chain", "serial")),
            fan_out(names["fan_out"]),
        )
    )
    # Connections, channels and caches warm, as in a platform that has been up a while.
    log.info("warm-up: %d runs", _WARMUP_RUNS)
    asyncio.run(bench.chain_runs(names["warmup"], args.steps, _WARMUP_RUNS, 10))
    figures: dict[str, Any] = {"names": names}
    postmaster, redis_pid = server_pids(servers)
    parties = {
        **{service: platform.pid(service) for service in SERVICES},
        "postgres": postmaster,
        "redis": redis_pid,
    }

    log.info("chain: %d runs of %d steps, %d in flight", args.runs, args.steps, args.in_flight)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["chain"] = asyncio.run(
        bench.chain_runs(names["chain"], args.steps, args.runs, args.in_flight)
    )
    figures["chain"]["cpu_s"] = meter.seconds()
    figures["chain"]["wall_s"] = round(time.perf_counter() - began, 3)

    log.info("one at a time: %d runs", args.serial_runs)
    figures["serial"] = asyncio.run(bench.one_at_a_time(names["serial"], args.serial_runs))

    log.info("fan-out: one run over %d items", args.fanout)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["fan_out"] = asyncio.run(bench.fan_out(names["fan_out"], args.fanout))
    figures["fan_out"]["cpu_s"] = meter.seconds()
    figures["fan_out"]["wall_s"] = round(time.perf_counter() - began, 3)
    return figures


def _at_least(figure: str, value: float, unit: str, floor: float) -> Row:
    return Row(figure, value, unit, f">= {floor:,.0f} {unit}", value >= floor)


def _at_most(figure: str, value: float, unit: str, ceiling: float) -> Row:
    return Row(figure, value, unit, f"<= {ceiling:g} {unit}", value <= ceiling)


def rows(figures: dict[str, Any]) -> list[Row]:
    ch, serial, fan = figures["chain"], figures["serial"], figures["fan_out"]
    gap, floor = ch["overhead_ms"], serial["overhead_ms"]
    return [
        _at_least(f"Chain: {ch['runs']:,} runs x {ch['steps']} echo, {ch['in_flight']} in flight",
                  ch["runs_per_s"], "runs/s", 200),
        _at_least("  steps", ch["steps_per_s"], "steps/s", 1000),
        Row("  as the client saw it (first StartRun -> all SUCCEEDED)", ch["client_runs_per_s"],
            "runs/s"),
        Row("  all StartRun calls done after", ch["start_seconds"] * 1000, "ms"),
        Row("  StartRun round trip p50", ch["start_run_rpc_ms"]["p50"], "ms"),
        Row("  StartRun round trip p99", ch["start_run_rpc_ms"]["p99"], "ms"),
        Row("  run created -> finished p50", ch["run_ms"]["p50"], "ms"),
        Row("  run created -> finished p99", ch["run_ms"]["p99"], "ms"),
        _at_most("Step overhead p50 (dependency's task finished -> task started)", gap["p50"],
                 "ms", 5),
        _at_most("Step overhead p99", gap["p99"], "ms", 25),
        Row("  task finished -> orchestrator advancing p50", ch["noticed_ms"]["p50"], "ms"),
        Row("  task finished -> orchestrator advancing p99", ch["noticed_ms"]["p99"], "ms"),
        Row("  advancing -> next task stored p50", ch["submitted_ms"]["p50"], "ms"),
        Row("  advancing -> next task stored p99", ch["submitted_ms"]["p99"], "ms"),
        Row("  stored -> started (task agent) p50", ch["queued_ms"]["p50"], "ms"),
        Row("  stored -> started (task agent) p99", ch["queued_ms"]["p99"], "ms"),
        Row("  run created -> first task started p50", ch["first_ms"]["p50"], "ms"),
        Row(f"  overhead p50, {serial['runs']} runs one at a time", floor["p50"], "ms"),
        Row(f"  overhead p99, {serial['runs']} runs one at a time", floor["p99"], "ms"),
        _at_most(f"Fan-out: {fan['width']:,} items, StartRun -> SUCCEEDED", fan["client_ms"],
                 "ms", 3000),
        Row("  StartRun round trip (stores the tasks)", fan["start_run_rpc_ms"], "ms"),
        Row("  run created -> last task stored", fan["last_task_stored_ms"], "ms"),
        Row("  run created -> first task started", fan["first_task_started_ms"], "ms"),
        Row("  run created -> last task finished", fan["last_task_finished_ms"], "ms"),
        Row("  run created -> last end recorded", fan["last_end_recorded_ms"], "ms"),
        Row("  run created -> run finished", fan["run_ms"], "ms"),
    ]  # fmt: skip


def cpu_lines(figures: dict[str, Any]) -> list[str]:
    """Who used the CPU in each timed phase, in shares of one core."""
    lines = []
    for phase, label in (("chain", "chain runs"), ("fan_out", "fan-out")):
        cpu, wall_s = figures[phase]["cpu_s"], figures[phase]["wall_s"]
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall_s:.0%})" for k, v in cpu.items())
        lines.append(f"CPU in the {wall_s:.1f}s of {label} (share of one core): {parts}")
        if cpu.get("other", 0) / wall_s > 0.25:
            lines.append(
                f"  WARNING: other processes used {cpu['other'] / wall_s:.0%} of a core during "
                f"the {label}; its figures are lower than on a quiet machine."
            )
    return lines


def markdown(results: dict[str, Any], table: list[Row]) -> str:
    lines = [
        f"# Workflow benchmark ({results['servers']} servers)",
        "",
        f"Run {results['started_at']}, code {results['git']['commit']}"
        f"{' with local changes' if results['git']['dirty'] else ''}: `{results['command']}`.",
        "",
        f"Machine: {summary(results['machine'])}.",
        "",
        "One task agent and one orchestrator (mTLS, tokens, encryption at rest on). Runs/s: "
        "first run created to last run finished (database clock); step gaps from "
        "tasks.tasks and orchestrator.step_tasks.",
        "",
        "| figure | value | target | status |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {'&emsp;' if r.figure.startswith(' ') else ''}{r.figure.strip()} | {r.shown()} "
        f"| {r.target} | {r.status} |"
        for r in table
    ]
    lines += ["", *(f"- {line.strip()}" for line in cpu_lines(results["workflows"]))]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], table: list[Row]) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"workflows-{results['servers']}"
    payload = {**results, "targets": [{**asdict(r), "status": r.status} for r in table]}
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, table))
    return [json_path, md_path]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    started = datetime.now(UTC)
    code = _git()  # before the services start: others may commit while the bench runs
    log_dir = ROOT / ".cache/bench/logs" / f"workflows-{started.strftime('%Y%m%dT%H%M%S')}"
    with bench_servers() as servers:
        upgrade(servers.database_url, ORCHESTRATOR_MIGRATIONS)
        machine = describe(servers)
        log.info("machine: %s", summary(machine))
        platform = Platform(servers.database_url, servers.redis_url, log_dir)
        try:
            platform.start()
            log.info("task agent and orchestrator up; logs in %s", log_dir)
            figures = _measure(platform, servers, args)
        except BaseException:
            log.error("the services' logs: %s", log_dir)
            raise
        finally:
            codes = platform.stop()
            unclean = {s: c for s, c in codes.items() if c != 0}
            if unclean:
                log.warning("unclean exits %s; see %s", unclean, log_dir)
            delete_keys(servers.redis_url, f"{platform.prefix}:")
    both_embedded = servers.redis_is_ours and servers.postgres_source == "embedded"
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "servers": "embedded" if both_embedded else "external",
        "git": code,
        "command": " ".join(
            ["python -m bench.workflows", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine,
        "config": vars(args),
        "workflows": figures,
        "logs": str(log_dir.relative_to(ROOT)),
    }
    table = rows(figures)
    out = [
        f"Workflow benchmark, {results['servers']} servers: {summary(machine)}",
        "",
        table_text(table),
        "",
        *cpu_lines(figures),
    ]
    paths = write(results, table)
    out += ["", f"Written: {', '.join(str(p.relative_to(ROOT)) for p in paths)}"]
    sys.stdout.write("\n".join(out) + "\n")
    missed = [r.figure.strip() for r in table if r.passed is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
