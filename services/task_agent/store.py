"""Tasks in PostgreSQL, the source of truth. Every transition is one statement guarded by
the state it expects and, for a running task, by the fencing token (its attempt)."""

import json
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common.crypto import Keyring
from libs.common.db import driver_connection
from libs.common.paging import newest_first
from services.task_agent.model import Holder, NewTask, Task, TaskState
from services.task_agent.tables import (
    dead_letters,
    insert_values,
    result_aad,
    row_to_task,
    stored_task,
    tasks,
)

NOW = sa.func.now()
PENDING = (TaskState.QUEUED.value, TaskState.RETRYING.value)

# One constant statement whatever the batch size: arrays, not a VALUES list, so neither
# SQLAlchemy nor psycopg compiles anything per batch.
_INSERT_COLUMNS = {
    "id": "uuid", "type": "text", "queue": "text", "priority": "smallint", "state": "text",
    "payload": "bytea", "attempts": "int", "max_attempts": "int", "initial_backoff_s": "float8",
    "max_backoff_s": "float8", "backoff_multiplier": "float8", "timeout_s": "float8",
    "deadline_at": "timestamptz", "fallback_type": "text", "parent_id": "uuid",
    "concurrency_key": "text", "idempotency_key": "text", "labels": "jsonb", "run_at": "timestamptz",
    "dispatched_at": "timestamptz", "progress": "float8", "cancel_requested": "bool",
    "created_at": "timestamptz", "updated_at": "timestamptz", "agent": "text",
    "lease_expires_at": "timestamptz", "started_at": "timestamptz", "trace_context": "jsonb",
    "continuations": "bytea",
}  # fmt: skip
# Arrays go in binary (%b): psycopg dumps their elements five times faster than in text
# (where it escapes every element of a bytea array in Python).
_PLACEHOLDERS = ", ".join(f"%({c})b::{t}[]" for c, t in _INSERT_COLUMNS.items())
_INSERT = (
    f"INSERT INTO tasks.tasks ({', '.join(_INSERT_COLUMNS)}) "
    f"SELECT * FROM unnest({_PLACEHOLDERS}) "
    # Both unique columns, id and idempotency_key, arbitrate: a keyed task's id derives
    # from its key, so a taken key conflicts on both.
    "ON CONFLICT DO NOTHING RETURNING id"
)


_CLAIM = """
    UPDATE tasks.tasks
       SET state = 'RUNNING', attempts = attempts + 1, agent = %(agent)s,
           lease_expires_at = now() + make_interval(secs => %(lease)s),
           started_at = coalesce(started_at, now()), updated_at = now()
     WHERE id = ANY(%(ids)b::uuid[]) AND state IN ('QUEUED', 'RETRYING')
       AND run_at <= now() AND NOT cancel_requested
    RETURNING {columns}
""".format(columns=", ".join(c.name for c in tasks.c))
_SUCCEED = """
    UPDATE tasks.tasks AS t
       SET state = 'SUCCEEDED', result = v.result, progress = 1, finished_at = now(),
           updated_at = now(), lease_expires_at = NULL, error_reason = NULL,
           error_message = NULL, error_kind = NULL
      FROM unnest(%(done_ids)b::uuid[], %(done_attempts)b::int[], %(results)b::bytea[])
           AS v(id, attempt, result)
     WHERE t.id = v.id AND t.attempts = v.attempt AND t.state = 'RUNNING'
    RETURNING {columns}
""".format(
    # The continuations stay in the table: the worker holds them since it took the task.
    columns=", ".join(
        f"t.{c.name}" if c.name != "continuations" else "NULL::bytea AS continuations"
        for c in tasks.c
    )
)
# The results, and the continuations of the tasks whose results are recorded, in one
# statement: a continuation exists if and only if the task before it succeeded, and its
# times are the statement's, as its predecessor's end is.
_CONTINUATION_TIMES = {
    "created_at": "now()",
    "updated_at": "now()",
    "run_at": "now()",
    "dispatched_at": "now()",
    "started_at": "CASE WHEN c.agent IS NOT NULL THEN now() END",
    "lease_expires_at": "now() + (c.lease_expires_at - c.created_at)",
}
_SUCCEED_CONTINUING = f"""
    WITH done AS ({_SUCCEED}),
    continued AS (
        INSERT INTO tasks.tasks ({", ".join(_INSERT_COLUMNS)})
        SELECT {", ".join(_CONTINUATION_TIMES.get(c, f"c.{c}") for c in _INSERT_COLUMNS)}
          FROM unnest({_PLACEHOLDERS}, %(after)b::uuid[])
               AS c({", ".join(_INSERT_COLUMNS)}, after_id)
         WHERE c.after_id IN (SELECT id FROM done)
        ON CONFLICT DO NOTHING RETURNING id
    )
    SELECT done.*, ARRAY(SELECT id FROM continued) AS continued FROM done
"""


class TaskStore:
    def __init__(self, engine: AsyncEngine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring
        # Most transitions are one statement, atomic on its own: run without BEGIN/COMMIT,
        # one round trip instead of three.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def _task(self, row: Any) -> Task:
        return row_to_task(row, self._keyring)

    def _single(self) -> AsyncConnection:
        return self._autocommit.connect()

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """The hot statements (insert, claim, succeed) run on the psycopg connection itself,
        their results in binary: SQLAlchemy's per-statement and per-row work was a tenth
        of a busy agent's time."""
        async with (
            driver_connection(self._engine) as conn,
            conn.cursor(row_factory=namedtuple_row, binary=True) as cursor,
        ):
            await cursor.execute(sql, params)
            return await cursor.fetchall()

    async def insert(
        self,
        batch: Sequence[NewTask],
        now: datetime,
        held: Collection[uuid.UUID] = (),
        holder: Holder | None = None,
    ) -> list[tuple[Task, bool]]:
        """Stores a batch in one statement; the tasks in `held` are stored already claimed by
        `holder`. A task whose idempotency key is taken is not stored; the existing task
        stands in its place (created=False), as the first of a key given twice in the batch
        does for the second."""
        holders = {n.id: holder if n.id in held else None for n in batch}
        first: dict[uuid.UUID, NewTask] = {}
        for new in batch:
            first.setdefault(new.id, new)
        columns = self._insert_columns(list(first.values()), now, holders)
        created = {row.id for row in await self._fetch(_INSERT, columns)}
        missing = [n.idempotency_key for n in batch if n.id not in created and n.idempotency_key]
        existing = {}
        if missing:
            async with self._single() as conn:
                found = await conn.execute(
                    sa.select(tasks).where(tasks.c.idempotency_key.in_(missing))
                )
                existing = {row.idempotency_key: self._task(row) for row in found}
        answers = []
        for n in batch:
            if n.id not in created:
                answers.append((existing[n.idempotency_key], False))
            else:
                answers.append((stored_task(first[n.id], now, holders[n.id]), first[n.id] is n))
        return answers

    def _insert_columns(
        self, batch: Sequence[NewTask], now: datetime, holders: dict[uuid.UUID, Holder | None]
    ) -> dict[str, list[Any]]:
        rows = [insert_values(new, now, self._keyring, holders[new.id]) for new in batch]
        columns = {name: [row[name] for row in rows] for name in _INSERT_COLUMNS}
        columns["labels"] = [json.dumps(labels) for labels in columns["labels"]]
        columns["trace_context"] = [json.dumps(c) for c in columns["trace_context"]]
        return columns

    async def get(self, task_id: uuid.UUID) -> Task | None:
        async with self._single() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        return self._task(row) if row else None

    async def get_many(self, task_ids: Sequence[uuid.UUID]) -> list[Task]:
        async with self._single() as conn:
            rows = await conn.execute(sa.select(tasks).where(tasks.c.id.in_(task_ids)))
            return [self._task(row) for row in rows]

    async def list_tasks(
        self,
        state: TaskState | None,
        type_: str | None,
        queue: str | None,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> list[Task]:
        """Newest first, keyset-paginated on (created_at, id)."""
        query = sa.select(tasks)
        if state:
            query = query.where(tasks.c.state == state.value)
        if type_:
            query = query.where(tasks.c.type == type_)
        if queue:
            query = query.where(tasks.c.queue == queue)
        query = newest_first(query, tasks, after, limit)
        async with self._single() as conn:
            return [self._task(row) for row in await conn.execute(query)]

    async def claim(self, ids: Sequence[uuid.UUID], agent: str, lease_s: float) -> list[Task]:
        """Takes the due ones among `ids` for `agent`: attempts + 1 is the new fencing token.
        Ids already claimed, cancelled or not yet due are left alone."""
        rows = await self._fetch(_CLAIM, {"ids": list(ids), "agent": agent, "lease": lease_s})
        return [self._task(row) for row in rows]

    async def succeed(
        self,
        outcomes: Sequence[tuple[uuid.UUID, int, bytes]],
        continuations: Sequence[tuple[uuid.UUID, NewTask]] = (),
        now: datetime | None = None,
        held: Collection[uuid.UUID] = (),
        holder: Holder | None = None,
    ) -> tuple[list[Task], list[Task]]:
        """Records results in one statement; an outcome whose attempt is stale is refused
        (absent from the answer). The same statement stores the `continuations` (the id of
        the task each follows, and the task) of the tasks whose results it records, those
        in `held` claimed by `holder`; one whose id is taken is not stored. Answers the
        tasks recorded (without their continuations), and the continuations stored."""
        if not outcomes:
            return [], []
        ids, attempts, results = (list(col) for col in zip(*outcomes, strict=True))
        sealed = [
            self._keyring.encrypt(r, result_aad(i)) for i, r in zip(ids, results, strict=True)
        ]
        params: dict[str, Any] = {"done_ids": ids, "done_attempts": attempts, "results": sealed}
        if not continuations:
            return [self._task(row) for row in await self._fetch(_SUCCEED, params)], []
        at = now or datetime.now(UTC)
        first: dict[uuid.UUID, tuple[uuid.UUID, NewTask]] = {}
        for after, new in continuations:
            first.setdefault(new.id, (after, new))
        holders = {task_id: holder if task_id in held else None for task_id in first}
        params |= self._insert_columns([new for _, new in first.values()], at, holders)
        params["after"] = [after for after, _ in first.values()]
        rows = await self._fetch(_SUCCEED_CONTINUING, params)
        stored = set(rows[0].continued) if rows else set()
        return [self._task(row) for row in rows], [
            stored_task(new, at, holders[new.id]) for _, new in first.values() if new.id in stored
        ]

    async def _fenced_update(self, task_id: uuid.UUID, attempt: int, **values: Any) -> Task | None:
        """Changes a running task only if `attempt` is still its fencing token."""
        query = (
            sa.update(tasks)
            .where(
                tasks.c.id == task_id,
                tasks.c.attempts == attempt,
                tasks.c.state == TaskState.RUNNING.value,
            )
            .values(**values)
            .returning(*tasks.c)
        )
        async with self._single() as conn:
            row = (await conn.execute(query)).first()
        return self._task(row) if row else None

    async def release(self, task_id: uuid.UUID, attempt: int, run_at: datetime) -> Task | None:
        """Undoes a claim whose handler never started (a rate or concurrency limit said not
        yet): the attempt is not spent, the task is due again at `run_at`."""
        return await self._fenced_update(
            task_id,
            attempt,
            state=sa.case(
                (tasks.c.attempts == 1, TaskState.QUEUED.value),
                else_=TaskState.RETRYING.value,
            ),
            attempts=tasks.c.attempts - 1,
            started_at=sa.case((tasks.c.attempts == 1, None), else_=tasks.c.started_at),
            run_at=run_at,
            dispatched_at=run_at,
            lease_expires_at=None,
            agent=None,
            updated_at=NOW,
        )

    async def retry(
        self, task_id: uuid.UUID, attempt: int, run_at: datetime, kind: str, message: str
    ) -> Task | None:
        return await self._fenced_update(
            task_id,
            attempt,
            state=TaskState.RETRYING.value,
            run_at=run_at,
            dispatched_at=run_at,
            lease_expires_at=None,
            error_kind=kind,
            error_message=message,
            updated_at=NOW,
        )

    async def fail(
        self,
        task_id: uuid.UUID,
        attempt: int | None,
        reason: str,
        kind: str,
        message: str,
        fallback: NewTask | None,
    ) -> tuple[Task, NewTask | None] | None:
        """Ends a task as FAILED and, in the same transaction, either stores its fallback
        task or writes its dead letter. `attempt=None` fails a task that never ran."""
        guard = [tasks.c.id == task_id]
        if attempt is None:
            guard.append(tasks.c.state.in_(PENDING))
        else:
            guard += [tasks.c.attempts == attempt, tasks.c.state == TaskState.RUNNING.value]
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.update(tasks)
                    .where(*guard)
                    .values(
                        state=TaskState.FAILED.value,
                        error_reason=reason,
                        error_kind=kind,
                        error_message=message,
                        finished_at=NOW,
                        updated_at=NOW,
                        lease_expires_at=None,
                    )
                    .returning(*tasks.c)
                )
            ).first()
            if row is None:
                return None
            if fallback is not None:
                await conn.execute(
                    pg.insert(tasks).values(insert_values(fallback, row.updated_at, self._keyring))
                )
            else:
                await conn.execute(
                    sa.insert(dead_letters).values(
                        id=uuid.uuid4(), task_id=task_id, reason=reason, created_at=row.updated_at
                    )
                )
        return self._task(row), fallback

    async def cancel(self, task_id: uuid.UUID, reason: str) -> Task | None:
        """A pending task ends CANCELLED at once; a running one is marked, and its agent
        cancels the handler and ends it. None when the task does not exist."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.update(tasks)
                    .where(tasks.c.id == task_id, tasks.c.state.in_(PENDING))
                    .values(
                        state=TaskState.CANCELLED.value,
                        error_reason="cancelled",
                        error_message=reason,
                        finished_at=NOW,
                        updated_at=NOW,
                    )
                    .returning(*tasks.c)
                )
            ).first()
            if row is None:
                row = (
                    await conn.execute(
                        sa.update(tasks)
                        .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING.value)
                        .values(cancel_requested=True, error_message=reason, updated_at=NOW)
                        .returning(*tasks.c)
                    )
                ).first()
            if row is None:
                row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        return self._task(row) if row else None

    async def finish_cancelled(self, task_id: uuid.UUID, attempt: int) -> Task | None:
        return await self._fenced_update(
            task_id,
            attempt,
            state=TaskState.CANCELLED.value,
            error_reason="cancelled",
            finished_at=NOW,
            updated_at=NOW,
            lease_expires_at=None,
        )

    async def heartbeat(
        self, held: Sequence[tuple[uuid.UUID, int]], lease_s: float
    ) -> list[uuid.UUID]:
        """Renews the leases of the tasks an agent holds; answers those whose cancellation
        was requested."""
        if not held:
            return []
        ids, attempts = (list(col) for col in zip(*held, strict=True))
        query = sa.text(
            """
            UPDATE tasks.tasks AS t
               SET lease_expires_at = now() + make_interval(secs => :lease)
              FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
             WHERE t.id = v.id AND t.attempts = v.attempt AND t.state = 'RUNNING'
            RETURNING t.id, t.cancel_requested
            """
        )
        async with self._single() as conn:
            rows = await conn.execute(query, {"ids": ids, "attempts": attempts, "lease": lease_s})
            return [row.id for row in rows if row.cancel_requested]

    async def set_progress(self, task_id: uuid.UUID, attempt: int, progress: float) -> None:
        async with self._single() as conn:
            await conn.execute(
                sa.update(tasks)
                .where(tasks.c.id == task_id, tasks.c.attempts == attempt)
                .values(progress=progress, updated_at=NOW)
            )

    async def due_for_dispatch(self, stale_s: float, limit: int) -> list[Task]:
        """Pending tasks that are due and were never put on a stream, or not recently: the
        reconciler's work after Redis lost data or a dispatch was lost. Replicas skip each
        other's rows."""
        pick = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.state.in_(PENDING),
                tasks.c.run_at <= NOW,
                sa.or_(
                    tasks.c.dispatched_at.is_(None),
                    tasks.c.dispatched_at < NOW - sa.func.make_interval(0, 0, 0, 0, 0, 0, stale_s),
                ),
            )
            .order_by(tasks.c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        query = (
            sa.update(tasks)
            .where(tasks.c.id.in_(pick))
            .values(dispatched_at=NOW)
            .returning(*tasks.c)
        )
        async with self._single() as conn:
            return [self._task(row) for row in await conn.execute(query)]

    async def expire_leases(self, limit: int) -> list[Task]:
        """Running tasks whose agent stopped renewing: they become due again (the claim that
        follows is attempt + 1, which fences off the lost agent's late result)."""
        pick = (
            sa.select(tasks.c.id)
            .where(tasks.c.state == TaskState.RUNNING.value, tasks.c.lease_expires_at < NOW)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        query = (
            sa.update(tasks)
            .where(tasks.c.id.in_(pick))
            .values(
                state=TaskState.RETRYING.value,
                run_at=NOW,
                dispatched_at=None,
                lease_expires_at=None,
                error_kind="lease_expired",
                error_message="the agent holding the task stopped renewing its lease",
                updated_at=NOW,
            )
            .returning(*tasks.c)
        )
        async with self._single() as conn:
            return [self._task(row) for row in await conn.execute(query)]

    async def queue_stats(self) -> list[tuple[str, int, float, int]]:
        """(queue, due depth, age of the oldest due task in seconds, running) per queue."""
        query = sa.text(
            """
            SELECT queue,
                   count(*) FILTER (WHERE state IN ('QUEUED','RETRYING') AND run_at <= now()) AS depth,
                   coalesce(extract(epoch FROM now() - min(run_at)
                       FILTER (WHERE state IN ('QUEUED','RETRYING') AND run_at <= now())), 0) AS lag,
                   count(*) FILTER (WHERE state = 'RUNNING') AS running
              FROM tasks.tasks
             WHERE state IN ('QUEUED','RETRYING','RUNNING')
             GROUP BY queue ORDER BY queue
            """
        )
        async with self._single() as conn:
            return [(r.queue, r.depth, float(r.lag), r.running) for r in await conn.execute(query)]
