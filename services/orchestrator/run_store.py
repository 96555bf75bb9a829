"""Runs and their steps in PostgreSQL (schema `orchestrator`). A run changes only under its
row lock (`SELECT … FOR UPDATE`), so any number of orchestrators can share the runs. Inputs
and outputs are sealed with the data keys, bound to their row."""

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.crypto import Keyring
from libs.common.db import driver_connection
from services.orchestrator.dag import Item, RunState, StepState
from services.orchestrator.workflow_store import WorkflowRecord


@dataclass(frozen=True)
class RunRecord:
    id: uuid.UUID
    workflow: str
    version: int
    state: RunState
    attempt: int
    input: Any
    output: Any
    error: str
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    # Set for a child workflow's run: the run and step that started it.
    parent_run_id: uuid.UUID | None = None
    depth: int = 0
    # The trace of the request that started it (a child run: its parent's), which its
    # steps' tasks continue.
    trace_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepTask:
    step: str
    task_id: uuid.UUID | None
    item: Item
    started_at: datetime
    finished_at: datetime | None


class TaskEndLike(Protocol):
    """How a task (or a child run) ended: what a step records of it."""

    @property
    def task_id(self) -> uuid.UUID: ...

    @property
    def state(self) -> str: ...

    @property
    def output(self) -> Any: ...

    @property
    def error(self) -> str: ...


@dataclass(frozen=True)
class NewRun:
    """A run to insert."""

    workflow: WorkflowRecord
    input: Any
    idempotency_key: str | None
    deadline_s: float | None
    trace_context: dict[str, str]


@dataclass(frozen=True)
class RunEnd:
    """How a run ended."""

    run_id: uuid.UUID
    state: RunState
    output: Any = None
    error: str = ""


@dataclass(frozen=True)
class StartedStep:
    """The tasks (or child runs) one step of a run started, one per item."""

    run_id: uuid.UUID
    step: str
    attempt: int
    task_ids: list[uuid.UUID]


@dataclass(frozen=True)
class Mark:
    step: str
    state: StepState
    error: str
    at: datetime


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class RunStore:
    def __init__(self, engine: AsyncEngine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring

    # -- sealing -------------------------------------------------------------------------

    def _seal(self, value: Any, where: str, key: uuid.UUID) -> bytes:
        return self._keyring.encrypt(_json(value), f"{where}:".encode() + key.bytes)

    def _open(self, sealed: bytes | None, where: str, key: uuid.UUID) -> Any:
        if sealed is None:
            return None
        return json.loads(self._keyring.decrypt(bytes(sealed), f"{where}:".encode() + key.bytes))

    def _run(self, row: Any) -> RunRecord:
        return RunRecord(
            id=row.id,
            workflow=row.workflow,
            version=row.version,
            state=RunState(row.state),
            attempt=row.attempt,
            input=self._open(row.input, "runs.input", row.id),
            output=self._open(row.output, "runs.output", row.id),
            error=row.error,
            idempotency_key=row.idempotency_key,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deadline_at=row.deadline_at,
            parent_run_id=row.parent_run_id,
            depth=row.depth,
            trace_context=row.trace_context or {},
        )

    # -- runs ----------------------------------------------------------------------------

    @asynccontextmanager
    async def starting(
        self, new: Sequence["NewRun"]
    ) -> AsyncIterator[tuple["RunTx", list[tuple[RunRecord, bool]]]]:
        """A transaction that inserts runs (not child runs) in one statement, and answers
        each: the new run (created=True), or the one that already holds its idempotency
        key. Its runs are the created ones, whose rows it holds, with no steps yet. Like
        `locked`, a pipeline: the insert is one round trip, the writes go with the commit."""
        ids = [uuid.uuid4() for _ in new]
        params = {
            "ids": ids,
            "workflows": [n.workflow.name for n in new],
            "versions": [n.workflow.version for n in new],
            "inputs": [self._seal(n.input, "runs.input", i) for n, i in zip(new, ids, strict=True)],
            "keys": [n.idempotency_key for n in new],
            "deadlines": [n.deadline_s for n in new],
            "traces": [json.dumps(n.trace_context) for n in new],
        }
        async with (
            driver_connection(self._engine) as conn,
            conn.pipeline(),
            conn.transaction(),
        ):
            created = {row.id: self._run(row) for row in await _fetch(conn, _INSERT_RUNS, params)}
            # The others met a run holding their key (an earlier one, or one of this batch).
            taken = [n.idempotency_key for n, i in zip(new, ids, strict=True) if i not in created]
            existing = {}
            if taken:
                found = await _fetch(conn, _RUNS_BY_KEY, {"keys": taken})
                existing = {row.idempotency_key: self._run(row) for row in found}
            answers = [
                (created[i], True) if i in created else (existing[n.idempotency_key], False)
                for n, i in zip(new, ids, strict=True)
            ]
            runs = list(created.values())
            yield RunTx(conn, self, runs, {run.id: ([], []) for run in runs}), answers

    async def run(self, run_id: uuid.UUID) -> RunRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(f"SELECT {_RUN_READ} FROM orchestrator.runs WHERE id = :id"),
                    {"id": run_id},
                )
            ).first()
        return self._run(row) if row else None

    async def runs(
        self,
        workflow: str | None,
        state: RunState | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[RunRecord]:
        clauses = ["TRUE"]
        params: dict[str, Any] = {"limit": limit}
        if workflow:
            clauses.append("workflow = :workflow")
            params["workflow"] = workflow
        if state:
            clauses.append("state = :state")
            params["state"] = state.value
        if after:
            clauses.append("(created_at, id) < (:at, :after_id)")
            params["at"], params["after_id"] = after
        query = (
            f"SELECT {_RUN_READ} FROM orchestrator.runs WHERE {' AND '.join(clauses)}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        async with self._engine.connect() as conn:
            return [self._run(row) for row in await conn.execute(sa.text(query), params)]

    async def steps_of(self, run_id: uuid.UUID) -> tuple[list[StepTask], list[Mark]]:
        async with driver_connection(self._engine) as conn:
            params = {"ids": [run_id]}
            tasks = await _fetch(conn, _STEP_TASKS, params)
            marks = await _fetch(conn, _STEP_MARKS, params)
        return self._steps([run_id], tasks, marks)[run_id]

    @asynccontextmanager
    async def locked(self, run_ids: Sequence[uuid.UUID]) -> AsyncIterator["RunTx"]:
        """A transaction holding the row locks of those of `run_ids` that exist, taken in id
        order (two transactions locking overlapping sets wait for each other, never
        deadlock), with their steps read once the locks are held.

        It runs in a pipeline, so that an advance is two round trips to the server: the
        locks and the reads go together, and the writes go with the commit (their errors
        surface there, and roll it all back)."""
        ids = {"ids": sorted(set(run_ids))}
        async with (
            driver_connection(self._engine) as conn,
            conn.pipeline(),
            conn.transaction(),
        ):
            runs = conn.cursor(row_factory=namedtuple_row, binary=True)
            tasks = conn.cursor(row_factory=namedtuple_row, binary=True)
            marks = conn.cursor(row_factory=namedtuple_row, binary=True)
            await runs.execute(_LOCK_RUNS, ids)
            await tasks.execute(_STEP_TASKS, ids)
            await marks.execute(_STEP_MARKS, ids)
            found = [self._run(row) for row in await runs.fetchall()]
            steps = self._steps(
                [run.id for run in found], await tasks.fetchall(), await marks.fetchall()
            )
            yield RunTx(conn, self, found, steps)

    async def stale_runs(self, older_than_s: float, limit: int) -> list[uuid.UUID]:
        """Running runs nobody changed for a while (a completion may have been lost), or
        past their deadline; skipped when another orchestrator holds them."""
        query = (
            "SELECT id FROM orchestrator.runs WHERE state = 'RUNNING'"
            " AND (updated_at < now() - make_interval(secs => :age) OR deadline_at < now())"
            " ORDER BY updated_at LIMIT :limit FOR UPDATE SKIP LOCKED"
        )
        async with self._engine.begin() as conn:
            rows = await conn.execute(sa.text(query), {"age": older_than_s, "limit": limit})
            return [row.id for row in rows]

    def _steps(
        self, run_ids: Sequence[uuid.UUID], tasks: Sequence[Any], marks: Sequence[Any]
    ) -> dict[uuid.UUID, tuple[list[StepTask], list[Mark]]]:
        """The steps' tasks and marks of each of `run_ids`, from their rows."""
        found: dict[uuid.UUID, tuple[list[StepTask], list[Mark]]] = {r: ([], []) for r in run_ids}
        for row in tasks:
            if row.run_id not in found:
                continue
            output = (
                self._open(row.output, "step_tasks.output", row.task_id)
                if row.output is not None
                else None
            )
            item = Item(row.item, row.attempt, StepState(row.state), output, row.error)
            found[row.run_id][0].append(
                StepTask(row.step, row.task_id, item, row.started_at, row.finished_at)
            )
        for row in marks:
            if row.run_id in found:
                found[row.run_id][1].append(Mark(row.step, StepState(row.state), row.error, row.at))
        return found


class RunTx:
    """Reads and writes of runs inside the transaction that holds their locks. The writes
    are sent as they are made and answered with the commit."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        store: RunStore,
        runs: list[RunRecord],
        steps: dict[uuid.UUID, tuple[list[StepTask], list[Mark]]],
    ) -> None:
        self._conn = conn
        self._store = store
        # The runs as they were when their locks were taken, in id order, and their steps.
        self.runs = runs
        self.steps = steps

    async def insert_run(
        self,
        workflow: WorkflowRecord,
        run_input: Any,
        idempotency_key: str,
        deadline_s: float | None,
        trace_context: dict[str, str],
        parent: tuple[uuid.UUID, str, int],
    ) -> tuple[RunRecord, bool]:
        """A child run: the new one (created=True), or the one that already holds the
        idempotency key. It is inserted in its parent's transaction (its row references the
        locked parent: from another transaction it would wait for the parent's lock)."""
        parent_run, parent_step, depth = parent
        run_id = uuid.uuid4()
        params = {
            "id": run_id,
            "workflow": workflow.name,
            "version": workflow.version,
            "input": self._store._seal(run_input, "runs.input", run_id),
            "key": idempotency_key,
            "deadline": deadline_s,
            "parent_run": parent_run,
            "parent_step": parent_step,
            "depth": depth,
            "trace_context": json.dumps(trace_context),
        }
        rows = await _fetch(self._conn, _INSERT_CHILD_RUN, params)
        if rows:
            return self._store._run(rows[0]), True
        [existing] = await _fetch(self._conn, _RUNS_BY_KEY, {"keys": [idempotency_key]})
        return self._store._run(existing), False

    async def add_tasks(self, started: Sequence[StartedStep]) -> None:
        """The tasks (or child runs) steps now run, replacing an earlier attempt's: one
        statement for them all."""
        rows = [
            (s.run_id, s.step, item, s.attempt, task_id)
            for s in started
            for item, task_id in enumerate(s.task_ids)
        ]
        if not rows:
            return
        runs, steps, items, attempts, task_ids = (
            list(column) for column in zip(*rows, strict=True)
        )
        await self._conn.execute(
            "INSERT INTO orchestrator.step_tasks"
            " (run_id, step, item, attempt, task_id, state, started_at)"
            " SELECT r, s, i, a, t, 'RUNNING', now() FROM unnest(%(runs)b::uuid[],"
            " %(steps)b::text[], %(items)b::int[], %(attempts)b::int[], %(tasks)b::uuid[])"
            " AS u(r, s, i, a, t)"
            " ON CONFLICT (run_id, step, item) DO UPDATE SET attempt = excluded.attempt,"
            " task_id = excluded.task_id, state = 'RUNNING', output = NULL, error = '',"
            " started_at = now(), finished_at = NULL",
            {"runs": runs, "steps": steps, "items": items, "attempts": attempts, "tasks": task_ids},
        )

    async def finish_tasks(self, ends: Sequence["TaskEndLike"]) -> None:
        """Records how tasks ended on their steps, in one statement; an end for a task that
        is not (or no longer) running changes nothing."""
        if not ends:
            return
        outputs = [
            self._store._seal(e.output, "step_tasks.output", e.task_id)
            if e.state == StepState.SUCCEEDED
            else None
            for e in ends
        ]
        await self._conn.execute(
            "UPDATE orchestrator.step_tasks t SET state = v.state, output = v.output,"
            " error = v.error, finished_at = now()"
            " FROM unnest(%(ids)b::uuid[], %(states)b::text[], %(outputs)b::bytea[],"
            " %(errors)b::text[]) AS v(task_id, state, output, error)"
            " WHERE t.task_id = v.task_id AND t.state = 'RUNNING'",
            {
                "ids": [e.task_id for e in ends],
                "states": [e.state for e in ends],
                "outputs": outputs,
                "errors": [e.error for e in ends],
            },
        )

    async def mark(self, run_id: uuid.UUID, step: str, state: StepState, error: str) -> None:
        await self._conn.execute(
            "INSERT INTO orchestrator.step_marks (run_id, step, state, error, at)"
            " VALUES (%(run_id)s, %(step)s, %(state)s, %(error)s, now())"
            " ON CONFLICT (run_id, step) DO UPDATE SET state = excluded.state,"
            " error = excluded.error, at = now()",
            {"run_id": run_id, "step": step, "state": state.value, "error": error},
        )

    async def cancel_steps(
        self, run_id: uuid.UUID, steps: Sequence[str]
    ) -> list[tuple[str, uuid.UUID]]:
        """Marks the running tasks (or child runs) of `steps` cancelled; answers them by
        step."""
        rows = await _fetch(
            self._conn,
            "UPDATE orchestrator.step_tasks SET state = 'CANCELLED', finished_at = now()"
            " WHERE run_id = %(run_id)s AND step = ANY(%(steps)b::text[]) AND state = 'RUNNING'"
            " RETURNING step, task_id",
            {"run_id": run_id, "steps": list(steps)},
        )
        return [(row.step, row.task_id) for row in rows if row.task_id is not None]

    async def retry(self, run_id: uuid.UUID, on_failure: str | None) -> list[str]:
        """Failed and cancelled steps (and the on_failure step) start over, in the run's
        next attempt; answers their names."""
        params = {"id": run_id, "handler": on_failure}
        marks = await _fetch(
            self._conn,
            "DELETE FROM orchestrator.step_marks WHERE run_id = %(id)s"
            " AND (state IN ('FAILED', 'CANCELLED') OR step = %(handler)s) RETURNING step",
            params,
        )
        tasks = await _fetch(
            self._conn,
            "DELETE FROM orchestrator.step_tasks WHERE run_id = %(id)s AND step IN ("
            " SELECT step FROM orchestrator.step_tasks WHERE run_id = %(id)s"
            " AND (state IN ('FAILED', 'CANCELLED') OR step = %(handler)s)) RETURNING step",
            params,
        )
        await self._conn.execute(
            "UPDATE orchestrator.runs SET state = 'RUNNING', attempt = attempt + 1,"
            " output = NULL, error = '', finished_at = NULL, updated_at = now()"
            " WHERE id = %(id)s",
            params,
        )
        return sorted({r.step for r in marks} | {r.step for r in tasks})

    async def end_runs(self, ends: Sequence[RunEnd]) -> None:
        """Runs that ended (SUCCEEDED, FAILED or CANCELLED), in one statement."""
        if not ends:
            return
        await self._conn.execute(
            "UPDATE orchestrator.runs r SET state = v.state, output = v.output,"
            " error = v.error, updated_at = now(), finished_at = now()"
            " FROM unnest(%(ids)b::uuid[], %(states)b::text[], %(outputs)b::bytea[],"
            " %(errors)b::text[]) AS v(id, state, output, error) WHERE r.id = v.id",
            {
                "ids": [e.run_id for e in ends],
                "states": [e.state.value for e in ends],
                "outputs": [
                    self._store._seal(e.output, "runs.output", e.run_id)
                    if e.output is not None
                    else None
                    for e in ends
                ],
                "errors": [e.error for e in ends],
            },
        )

    async def touch(self, run_ids: Sequence[uuid.UUID]) -> None:
        if run_ids:
            await self._conn.execute(
                "UPDATE orchestrator.runs SET updated_at = now() WHERE id = ANY(%(ids)b::uuid[])",
                {"ids": list(run_ids)},
            )


async def _fetch(conn: psycopg.AsyncConnection[Any], sql: str, params: Any) -> list[Any]:
    async with conn.cursor(row_factory=namedtuple_row, binary=True) as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchall()


_RUN_COLUMNS = (
    "id, workflow, version, state, input, idempotency_key, created_at, updated_at,"
    " deadline_at, depth, trace_context"
)
# What a RunRecord is made of; named, not `*` (see libs/common/db.py).
_RUN_READ = (
    "id, workflow, version, state, attempt, input, output, error, idempotency_key, created_at,"
    " updated_at, deadline_at, parent_run_id, depth, trace_context"
)
_INSERT_RUNS = (
    f"INSERT INTO orchestrator.runs ({_RUN_COLUMNS})"
    " SELECT id, w, v, 'RUNNING', i, k, now(), now(), now() + make_interval(secs => d), 0, t"
    " FROM unnest(%(ids)b::uuid[], %(workflows)b::text[], %(versions)b::int[],"
    " %(inputs)b::bytea[], %(keys)b::text[], %(deadlines)b::float8[], %(traces)b::jsonb[])"
    " AS u(id, w, v, i, k, d, t)"
    f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_RUN_READ}"
)
_INSERT_CHILD_RUN = (
    f"INSERT INTO orchestrator.runs ({_RUN_COLUMNS}, parent_run_id, parent_step)"
    " VALUES (%(id)s, %(workflow)s, %(version)s, 'RUNNING', %(input)s, %(key)s, now(), now(),"
    " now() + make_interval(secs => %(deadline)s), %(depth)s, %(trace_context)s::jsonb,"
    " %(parent_run)s, %(parent_step)s)"
    f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_RUN_READ}"
)
_RUNS_BY_KEY = (
    f"SELECT {_RUN_READ} FROM orchestrator.runs WHERE idempotency_key = ANY(%(keys)b::text[])"
)
_LOCK_RUNS = (
    f"SELECT {_RUN_READ} FROM orchestrator.runs WHERE id = ANY(%(ids)b::uuid[])"
    " ORDER BY id FOR UPDATE"
)
_STEP_TASKS = (
    "SELECT run_id, step, item, attempt, task_id, state, output, error, started_at, finished_at"
    " FROM orchestrator.step_tasks WHERE run_id = ANY(%(ids)b::uuid[])"
    " ORDER BY run_id, step, item"
)
_STEP_MARKS = (
    "SELECT run_id, step, state, error, at FROM orchestrator.step_marks"
    " WHERE run_id = ANY(%(ids)b::uuid[])"
)
