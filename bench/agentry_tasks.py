"""The task agent's figures, measured as a client sees them: batches and single tasks over
gRPC, completion read from Postgres (the source of truth)."""

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import psycopg

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from bench.stats import distribution
from libs.common.crypto import Keyring
from services.task_agent.tables import result_aad

log = logging.getLogger(__name__)

PARKED_QUEUE = "bench-parked"  # no agent reads it: what is submitted there stays queued
_POLL_S = 0.05
_STALL_S = 30.0  # no task finished for this long: the agent is stuck


def _specs(start: int, count: int, queue: str = "") -> list[tasks_pb2.TaskSpec]:
    return [
        tasks_pb2.TaskSpec(type="echo", payload=b'{"n":%d}' % i, queue=queue)
        for i in range(start, start + count)
    ]


def _batches(n: int, batch: int, queue: str = "") -> list[tasks_pb2.SubmitTasksRequest]:
    return [
        tasks_pb2.SubmitTasksRequest(tasks=_specs(k, min(batch, n - k), queue))
        for k in range(0, n, batch)
    ]


async def _submit_batches(
    stub: tasks_pb2_grpc.TaskServiceStub, requests: Sequence[tasks_pb2.SubmitTasksRequest]
) -> float:
    """Submits the batches one after another; answers the seconds it took."""
    began = time.perf_counter()
    for request in requests:
        reply = await stub.SubmitTasks(request, timeout=60)
        if len(reply.tasks) != len(request.tasks):
            raise RuntimeError(f"submitted {len(request.tasks)}, stored {len(reply.tasks)}")
    return time.perf_counter() - began


async def _clock_offset(conn: psycopg.AsyncConnection[Any]) -> float:
    """Server clock minus ours, so server timestamps can be compared with client ones."""
    sent = time.time()
    row = await (await conn.execute("SELECT extract(epoch FROM clock_timestamp())")).fetchone()
    assert row is not None
    return float(row[0]) - (sent + time.time()) / 2


async def _wait_succeeded(
    conn: psycopg.AsyncConnection[Any], n: int, deadline_s: float, check: Callable[[], None]
) -> float:
    """Polls until `n` tasks have SUCCEEDED; answers the perf_counter time it saw them.
    `check` raises when waiting is pointless (the agent died, the submitter failed); so does
    a count that has not moved for _STALL_S."""
    deadline = time.monotonic() + deadline_s
    last, moved_at = -1, time.monotonic()
    while True:
        row = await (
            await conn.execute("SELECT count(*) FROM tasks.tasks WHERE state = 'SUCCEEDED'")
        ).fetchone()
        done = row[0] if row is not None else 0
        if done >= n:
            return time.perf_counter()
        check()
        now = time.monotonic()
        if done != last:
            last, moved_at = done, now
        if now > deadline or now - moved_at > _STALL_S:
            states = await (
                await conn.execute("SELECT state, count(*) FROM tasks.tasks GROUP BY state")
            ).fetchall()
            why = f"in {deadline_s:.0f}s" if now > deadline else f"(none for {_STALL_S:.0f}s)"
            raise TimeoutError(f"not all {n} tasks succeeded {why}: {dict(states)}")
        await asyncio.sleep(_POLL_S)


class AgentryBench:
    """Runs against one started agent: `channel` opens a channel to it, `database_url` its
    database, `check_alive` raises when its process has gone."""

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        database_url: str,
        check_alive: Callable[[], None],
        keyring: Keyring,
    ) -> None:
        """`keyring` opens the results the agent stored."""
        self._channel = channel
        self._keyring = keyring
        self._database_url = database_url
        self._check_alive = check_alive

    async def submit_alone(self, n: int, batch: int) -> dict[str, Any]:
        """Submit throughput with no draining beside it: the tasks go to a queue no agent
        reads, so the process does nothing but accept them."""
        requests = _batches(n, batch, PARKED_QUEUE)
        async with self._channel() as channel:
            seconds = await _submit_batches(tasks_pb2_grpc.TaskServiceStub(channel), requests)
        return {
            "tasks": n,
            "batch": batch,
            "seconds": round(seconds, 3),
            "tasks_per_s": n / seconds,
        }

    async def drain(self, n: int, batch: int, deadline_s: float) -> dict[str, Any]:
        """From the first SubmitTasks call to the moment all `n` tasks are SUCCEEDED."""
        requests = _batches(n, batch)
        async with (
            self._channel() as channel,
            await psycopg.AsyncConnection.connect(self._database_url, autocommit=True) as conn,
        ):
            stub = tasks_pb2_grpc.TaskServiceStub(channel)
            offset = await _clock_offset(conn)
            began_wall, began = time.time(), time.perf_counter()
            submitting = asyncio.create_task(_submit_batches(stub, requests))

            def check() -> None:
                self._check_alive()
                if submitting.done() and submitting.exception() is not None:
                    submitting.result()  # raises the submitter's error

            try:
                seen_at = await _wait_succeeded(conn, n, deadline_s, check)
            finally:
                if not submitting.done():
                    submitting.cancel()
            submit_s = await submitting
            row = await (
                await conn.execute(
                    "SELECT extract(epoch FROM max(finished_at)),"
                    " extract(epoch FROM max(started_at) - min(created_at)), count(*)"
                    " FROM tasks.tasks"
                )
            ).fetchone()
        assert row is not None
        # The last result's commit time, in our clock; the poll that saw it is an upper bound.
        drain_s = float(row[0]) - offset - began_wall
        return {
            "tasks": n,
            "batch": batch,
            "seconds": round(drain_s, 3),
            "tasks_per_s": n / drain_s,
            "seen_by_poll_s": round(seen_at - began, 3),
            "submit_seconds": round(submit_s, 3),
            "submit_tasks_per_s": n / submit_s,
            "first_created_to_last_started_s": round(float(row[1]), 3),
            "rows": row[2],
        }

    async def latency(self, rate: float, seconds: float, deadline_s: float) -> dict[str, Any]:
        """Single SubmitTask calls paced at `rate` per second (each sent on its schedule,
        not after the previous answer); submit→start is from the client's send to the
        handler's first line (`bench.stamp`), on the machine's one clock."""
        n = round(rate * seconds)
        rpc_ms: list[float] = []
        errors: list[str] = []
        async with (
            self._channel() as channel,
            await psycopg.AsyncConnection.connect(self._database_url, autocommit=True) as conn,
        ):
            stub = tasks_pb2_grpc.TaskServiceStub(channel)

            async def submit_one(i: int) -> None:
                payload = json.dumps({"sent": time.time()}).encode()
                request = tasks_pb2.SubmitTaskRequest(
                    task=tasks_pb2.TaskSpec(type="bench.stamp", payload=payload)
                )
                sent = time.perf_counter()
                try:
                    await stub.SubmitTask(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                    return
                rpc_ms.append((time.perf_counter() - sent) * 1000)

            began = time.perf_counter()
            calls = []
            for i in range(n):
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                calls.append(asyncio.create_task(submit_one(i)))
            sent_over = time.perf_counter() - began
            await asyncio.gather(*calls)
            if errors:
                log.warning(
                    "%d of %d SubmitTask calls failed, first: %s", len(errors), n, errors[0]
                )
            await _wait_succeeded(conn, len(rpc_ms), deadline_s, self._check_alive)
            stored = await (
                await conn.execute(
                    "SELECT id, result, extract(epoch FROM finished_at - created_at) * 1000"
                    " FROM tasks.tasks WHERE state = 'SUCCEEDED' AND type = 'bench.stamp'"
                )
            ).fetchall()
        rows = [
            (json.loads(self._keyring.decrypt(result, result_aad(id_)))["submit_to_start_ms"], ms)
            for id_, result, ms in stored
        ]
        return {
            "tasks": n,
            "target_rate_per_s": rate,
            "achieved_rate_per_s": (n - 1) / sent_over if sent_over > 0 else None,
            "submit_errors": len(errors),
            "submit_to_start_ms": distribution([float(r[0]) for r in rows]),
            "submit_to_finish_ms": distribution([float(r[1]) for r in rows]),
            "submit_rpc_ms": distribution(rpc_ms),
        }
