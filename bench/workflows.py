"""The orchestrator's figures against their targets: runs of a chain of echo steps per second,
the per-step orchestration overhead (one run at a time, and with runs started at a steady
rate), and one wide fan-out. One task agent and one orchestrator run as processes (mTLS,
tokens and encryption on), on the bench's own database and a Redis prefix of their own; the
servers are the ones named by REDIS_URL / DATABASE_URL, else embedded ones. Timings come
from the tables: both services stamp their rows with the database's clock.

    python -m bench.workflows [--runs 1000] [--in-flight 50] [--rate 50] [--fanout 1000]
                              [--strict]
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg

from agentry.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from bench.cpu import CpuMeter
from bench.machine import describe, summary
from bench.report import table_text
from bench.run import _git
from bench.servers import Servers, bench_servers, delete_keys, server_pids
from bench.stats import distribution
from bench.workflows_report import cpu_lines, rows, write
from dev import secrets
from dev.embedded import free_port
from dev.stack import ROOT, Ports, Stack
from libs.common.channels import open_channel
from libs.common.identity import AgentIdentity
from libs.common.migrations import upgrade
from libs.common.tokens import mint

log = logging.getLogger("bench")

ORCHESTRATOR_MIGRATIONS = ROOT / "services/orchestrator/migrations"
SERVICES = ("task_agent", "orchestrator")  # in start order: the orchestrator calls the agent
_POLL_S = 0.02
_STALL_S = 30.0  # no step ended for this long: something is stuck
_WARMUP_RUNS = 20

Conn = psycopg.AsyncConnection[Any]
Stub = workflows_pb2_grpc.WorkflowServiceStub


def chain(name: str, steps: int) -> dict[str, Any]:
    """`steps` echo steps (bench.echo: echo that says when its handler started), each
    depending on the one before and taking the start of its handler."""
    first = {"name": "s1", "type": "bench.echo", "input": {"n": {"$ref": "input.n"}}}
    rest = [
        {"name": f"s{k}", "type": "bench.echo", "depends_on": [f"s{k - 1}"],
         "input": {"after": {"$ref": f"steps.s{k - 1}.output.started"}}}
        for k in range(2, steps + 1)
    ]  # fmt: skip
    return {"name": name, "steps": [first, *rest]}


def fan_out(name: str) -> dict[str, Any]:
    """One echo step over every item of the run's input."""
    each = {"name": "each", "type": "echo", "for_each": {"$ref": "input.items"},
            "input": {"i": {"$ref": "item"}}}  # fmt: skip
    return {"name": name, "steps": [each]}


class Platform:
    """A task agent and an orchestrator sharing a Redis prefix, so the orchestrator follows
    the agent's task events, as `make run` starts them."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self._secrets = secrets.ensure(ROOT / ".cache/bench/secrets")
        self.prefix = f"bench-wf-{uuid.uuid4().hex[:10]}"
        self.log_dir = log_dir
        agent_port = orchestrator_port = free_port()
        while orchestrator_port == agent_port:
            orchestrator_port = free_port()
        self.ports = Ports(task_agent=agent_port, orchestrator=orchestrator_port)
        # A Stack per service: each needs its own AGENTRY_GRPC_PORT and instance.
        env = self._env
        self._stacks = {
            s: Stack(database_url, redis_url, self.ports, self._secrets, env(s), log_dir)
            for s in SERVICES
        }

    def _env(self, service: str) -> dict[str, str]:
        handlers = '["services.task_agent.builtins", "bench.handlers"]'
        return {
            **({"AGENTRY_HANDLER_MODULES": handlers} if service == "task_agent" else {}),
            "AGENTRY_REDIS_PREFIX": self.prefix,
            "AGENTRY_GRPC_PORT": str(self.ports.grpc(service)),
            "AGENTRY_INSTANCE": f"{self.prefix}-{service}",
            "AGENTRY_LOG_LEVEL": "WARNING",
            # The bench migrated its database already; the processes are as in production.
            "AGENTRY_MIGRATE_ON_START": "false",
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
                where = self.log_dir / f"{service}.log"
                raise RuntimeError(f"{service} exited with code {code}; see {where}")

    def channel(self) -> grpc.aio.Channel:
        """As the gateway relaying an admin (RegisterWorkflow needs one)."""
        key = self._secrets.jwt_private_key.read_bytes()
        admin = mint(key, "bench", "admin", "agentry-gateway", 3600)
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


async def _query(conn: Conn, sql: str, *params: Any) -> list[Any]:
    return await (await conn.execute(sql, params)).fetchall()


async def _wait_runs(
    conn: Conn, workflow: str, n: int, deadline_s: float, check: Callable[[], None]
) -> float:
    """Polls until `n` runs of `workflow` have SUCCEEDED; answers the perf_counter time it saw
    them. Raises on a run that ended otherwise, a dead process (`check`), the deadline, or no
    step ending for _STALL_S (under load runs advance breadth-first: none may end for long
    while their steps do)."""
    deadline = time.monotonic() + deadline_s
    progress, moved_at, looked_at = (-1, -1), time.monotonic(), 0.0
    while True:
        found = await _query(
            conn,
            "SELECT state, count(*), max(error) FROM orchestrator.runs WHERE workflow = %s"
            " GROUP BY state",
            workflow,
        )
        states = {state: count for state, count, _ in found}
        done = states.get("SUCCEEDED", 0)
        if done >= n:
            return time.perf_counter()
        if set(states) - {"RUNNING", "SUCCEEDED"}:
            errors = {state: error for state, _, error in found if error}
            raise RuntimeError(f"runs of {workflow} ended badly: {states}; errors {errors}")
        check()
        now = time.monotonic()
        if now - looked_at >= 1.0:  # the heavier count once a second
            looked_at = now
            ended = await _query(
                conn,
                "SELECT count(*) FROM orchestrator.step_tasks st JOIN orchestrator.runs r"
                " ON r.id = st.run_id WHERE r.workflow = %s AND st.finished_at IS NOT NULL",
                workflow,
            )
            if (done, ended[0][0]) != progress:
                progress, moved_at = (done, ended[0][0]), now
        if now > deadline or now - moved_at > _STALL_S:
            tasks = await _query(conn, "SELECT state, count(*) FROM tasks.tasks GROUP BY state")
            why = f"in {deadline_s:.0f}s" if now > deadline else f"(no step for {_STALL_S:.0f}s)"
            raise TimeoutError(
                f"not all {n} runs of {workflow} succeeded {why}: runs {states}, "
                f"{progress[1]} steps ended, tasks {dict(tasks)}"
            )
        await asyncio.sleep(_POLL_S)


async def _start_runs(stub: Stub, workflow: str, inputs: Sequence[Any], n: int) -> list[float]:
    """StartRun for each input, `n` calls at a time; answers their round trips (ms)."""
    pending = iter(inputs)
    round_trips: list[float] = []

    async def caller() -> None:
        for run_input in pending:
            request = workflows_pb2.StartRunRequest(
                workflow=workflow, input=json.dumps(run_input).encode()
            )
            sent = time.perf_counter()
            await stub.StartRun(request, timeout=60)
            round_trips.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(caller() for _ in range(n)))
    return round_trips


async def _handler_gaps(stub: Stub, conn: Conn, workflow: str) -> dict[str, Any]:
    """handler_gap: a step's handler started → the next step's handler started, over every
    run of `workflow` (bench.echo steps report it, read back through GetRun): a step's
    start as the code in it sees it, the dependency's run and result write included."""
    gaps = []
    for (run_id,) in await _query(
        conn, "SELECT id FROM orchestrator.runs WHERE workflow = %s", workflow
    ):
        reply = await stub.GetRun(workflows_pb2.GetRunRequest(run_id=str(run_id)), timeout=30)
        gaps += [json.loads(s.output)["gap_ms"] for s in reply.run.steps if b"gap_ms" in s.output]
    return {"handler_gap_ms": distribution(gaps)}


async def _chain_gaps(conn: Conn, workflow: str) -> dict[str, Any]:
    """Where the time between two steps of a chain goes, over every run of `workflow`, by
    the tables' clock:
    - overhead: the dependency's task finished → the step's task started (0 for a chain
      link, stored and claimed by the statement that records its dependency's result;
      `_handler_gaps` measures when the handlers run);
    - queued: the step's task stored → started, in the task agent;
    - noticed: the dependency's task finished → the orchestrator began advancing the run
      (its transaction's now(), which it writes as the dependency's finished_at): its
      bookkeeping, which a chain's steps started as continuations do not wait for.
    And `first`: run created → its first task started."""
    rows = await _query(
        conn,
        "SELECT st.run_id, st.step, st.finished_at, t.created_at, t.started_at, t.finished_at,"
        " r.created_at FROM orchestrator.step_tasks st"
        " JOIN orchestrator.runs r ON r.id = st.run_id"
        " JOIN tasks.tasks t ON t.id = st.task_id WHERE r.workflow = %s",
        workflow,
    )
    by_run: dict[uuid.UUID, dict[int, Any]] = defaultdict(dict)
    for row in rows:
        by_run[row[0]][int(row[1].removeprefix("s"))] = row
    parts: dict[str, list[float]] = defaultdict(list)
    for steps in by_run.values():
        parts["first"].append(_ms(steps[1][4], steps[1][6]))
        for k in range(2, len(steps) + 1):
            _, _, seen_end, _, _, prev_finished, _ = steps[k - 1]
            _, _, _, created, started, _, _ = steps[k]
            parts["overhead"].append(_ms(started, prev_finished))
            parts["queued"].append(_ms(started, created))
            parts["noticed"].append(_ms(seen_end, prev_finished))
    return {f"{name}_ms": distribution(samples) for name, samples in parts.items()}


class WorkflowBench:
    def __init__(self, platform: Platform, database_url: str, deadline_s: float) -> None:
        self._platform = platform
        self._database_url = database_url
        self._deadline_s = deadline_s

    async def _conn(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self._database_url, autocommit=True)

    async def register(self, *definitions: dict[str, Any]) -> None:
        async with self._platform.channel() as channel:
            stub = Stub(channel)
            for definition in definitions:
                raw = json.dumps(definition).encode()
                request = workflows_pb2.RegisterWorkflowRequest(
                    name=definition["name"], definition=raw
                )
                await stub.RegisterWorkflow(request, timeout=30)

    async def chain_runs(self, workflow: str, steps: int, n: int, in_flight: int) -> dict[str, Any]:
        """`n` runs of a `steps`-step chain, started `in_flight` at a time, until all have
        SUCCEEDED; the figures from the runs' own timestamps."""
        inputs = [{"n": i} for i in range(n)]
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = Stub(channel)
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
            runs = await _query(
                conn,
                "SELECT created_at, finished_at FROM orchestrator.runs WHERE workflow = %s",
                workflow,
            )
            gaps = await _chain_gaps(conn, workflow)
        first_created = min(created for created, _ in runs)
        seconds = (max(finished for _, finished in runs) - first_created).total_seconds()
        return {
            "runs": n,
            "in_flight": in_flight,
            "seconds": round(seconds, 3),
            "runs_per_s": n / seconds,
            "steps": steps,
            "steps_per_s": n * steps / seconds,
            "client_seconds": round(seen_at - began, 3),
            "client_runs_per_s": n / (seen_at - began),
            "all_started_ms": _ms(max(created for created, _ in runs), first_created),
            "start_run_rpc_ms": distribution(round_trips),
            "run_ms": distribution([_ms(finished, created) for created, finished in runs]),
            **gaps,
        }

    async def paced(self, workflow: str, rate: float, seconds: float) -> dict[str, Any]:
        """Runs started at a steady `rate` per second for `seconds` (an open loop: a start
        never waits for another), until all have SUCCEEDED: the step gaps of a platform
        under a load it keeps up with. (At saturation the gaps are queueing.)"""
        n = max(1, round(rate * seconds))
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = Stub(channel)
            loop = asyncio.get_running_loop()
            began = loop.time()

            async def start(i: int) -> None:
                await asyncio.sleep(max(0.0, began + i / rate - loop.time()))
                await _start_runs(stub, workflow, [{"n": i}], 1)

            starting = asyncio.gather(*(start(i) for i in range(n)))

            def check() -> None:
                self._platform.check_alive()
                if starting.done() and starting.exception() is not None:
                    starting.result()  # raises the starter's error

            try:
                await _wait_runs(conn, workflow, n, self._deadline_s, check)
            finally:
                if not starting.done():
                    starting.cancel()
            await starting
            ((first, last),) = await _query(
                conn,
                "SELECT min(created_at), max(created_at) FROM orchestrator.runs"
                " WHERE workflow = %s",
                workflow,
            )
            offered = (n - 1) / (last - first).total_seconds() if n > 1 else rate
            return {
                "runs": n,
                "rate": rate,
                "offered_runs_per_s": offered,
                **(await _chain_gaps(conn, workflow)),
                **(await _handler_gaps(stub, conn, workflow)),
            }

    async def one_at_a_time(self, workflow: str, n: int) -> dict[str, Any]:
        """`n` runs, each started once the one before has SUCCEEDED: the step gaps of an
        orchestrator with nothing else to do."""
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = Stub(channel)
            for i in range(n):
                await _start_runs(stub, workflow, [{"n": i}], 1)
                await _wait_runs(conn, workflow, i + 1, 30.0, self._platform.check_alive)
            gaps = await _handler_gaps(stub, conn, workflow)
            return {"runs": n, **(await _chain_gaps(conn, workflow)), **gaps}

    async def fan_out(self, workflow: str, width: int) -> dict[str, Any]:
        """One run over `width` items: StartRun sent → the run seen SUCCEEDED, with the
        milestones in between from the tables."""
        request = workflows_pb2.StartRunRequest(
            workflow=workflow, input=json.dumps({"items": list(range(width))}).encode()
        )
        async with self._platform.channel() as channel, await self._conn() as conn:
            stub = Stub(channel)
            began = time.perf_counter()
            reply = await stub.StartRun(request, timeout=60)
            start_rpc_ms = (time.perf_counter() - began) * 1000
            check = self._platform.check_alive
            seen_at = await _wait_runs(conn, workflow, 1, self._deadline_s, check)
            (row,) = await _query(
                conn,
                "SELECT r.created_at, max(t.created_at), min(t.started_at), max(t.finished_at),"
                " max(st.finished_at), r.finished_at, count(t.id) FROM orchestrator.runs r"
                " JOIN orchestrator.step_tasks st ON st.run_id = r.id"
                " JOIN tasks.tasks t ON t.id = st.task_id WHERE r.id = %s GROUP BY r.id",
                reply.run.id,
            )
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


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="runs of the chain")
    parser.add_argument("--steps", type=int, default=5, help="echo steps in the chain")
    parser.add_argument("--in-flight", type=int, default=50, help="StartRun calls at a time")
    parser.add_argument("--fanout", type=int, default=1000, help="items of the fan-out run")
    parser.add_argument(
        "--serial-runs", type=int, default=50, help="chain runs one at a time (unloaded gaps)"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="runs started per second in the paced phase"
    )
    parser.add_argument(
        "--paced-seconds", type=float, default=5.0, help="how long runs are started at --rate"
    )
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds a phase may take")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if min(args.runs, args.in_flight, args.fanout, args.serial_runs) < 1 or args.steps < 2:
        parser.error("--runs, --in-flight, --fanout, --serial-runs take 1 or more, --steps 2")
    if not (args.rate > 0 and args.paced_seconds > 0):
        parser.error("--rate and --paced-seconds take a positive number")
    return args


def _measure(platform: Platform, servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    bench = WorkflowBench(platform, servers.database_url, args.deadline)
    kinds = ("warmup", "chain", "paced", "serial")
    names = {k: f"{k}{args.steps}" for k in kinds} | {"fan_out": f"fan{args.fanout}"}
    chains = [chain(names[k], args.steps) for k in kinds]
    asyncio.run(bench.register(*chains, fan_out(names["fan_out"])))
    # Connections, channels and caches warm, as in a platform that has been up a while.
    log.info("warm-up: %d runs", _WARMUP_RUNS)
    asyncio.run(bench.chain_runs(names["warmup"], args.steps, _WARMUP_RUNS, 10))
    postmaster, redis_pid = server_pids(servers)
    parties = {s: platform.pid(s) for s in SERVICES} | {"postgres": postmaster, "redis": redis_pid}
    figures: dict[str, Any] = {"names": names}

    log.info("chain: %d runs of %d steps, %d in flight", args.runs, args.steps, args.in_flight)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["chain"] = asyncio.run(
        bench.chain_runs(names["chain"], args.steps, args.runs, args.in_flight)
    )
    figures["chain"] |= {"cpu_s": meter.seconds(), "wall_s": time.perf_counter() - began}

    log.info("paced: %g runs/s for %g s", args.rate, args.paced_seconds)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["paced"] = asyncio.run(bench.paced(names["paced"], args.rate, args.paced_seconds))
    figures["paced"] |= {"cpu_s": meter.seconds(), "wall_s": time.perf_counter() - began}

    log.info("one at a time: %d runs", args.serial_runs)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["serial"] = asyncio.run(bench.one_at_a_time(names["serial"], args.serial_runs))
    figures["serial"] |= {"cpu_s": meter.seconds(), "wall_s": time.perf_counter() - began}

    log.info("fan-out: one run over %d items", args.fanout)
    meter, began = CpuMeter(parties), time.perf_counter()
    figures["fan_out"] = asyncio.run(bench.fan_out(names["fan_out"], args.fanout))
    figures["fan_out"] |= {"cpu_s": meter.seconds(), "wall_s": time.perf_counter() - began}
    return figures


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
            unclean = {s: c for s, c in platform.stop().items() if c != 0}
            if unclean:
                log.warning("unclean exits %s; see %s", unclean, log_dir)
            delete_keys(servers.redis_url, f"{platform.prefix}:")
    both_embedded = servers.redis_is_ours and servers.postgres_source == "embedded"
    given = sys.argv[1:] if argv is None else argv
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "servers": "embedded" if both_embedded else "external",
        "git": code,
        "command": " ".join(["python -m bench.workflows", *given]),
        "machine": machine,
        "config": vars(args),
        "workflows": figures,
        "logs": str(log_dir.relative_to(ROOT)),
    }
    table = rows(figures)
    paths = write(results, table)
    out = [
        f"Workflow benchmark, {results['servers']} servers: {summary(machine)}",
        "",
        table_text(table),
        "",
        *cpu_lines(figures),
        "",
        f"Written: {', '.join(str(p.relative_to(ROOT)) for p in paths)}",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 1 if args.strict and any(r.passed is False for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
