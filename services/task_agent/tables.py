"""The tasks schema as SQLAlchemy tables, and the mapping between its rows and the domain.
Payloads and results are stored sealed by the keyring, bound to their row and column; the
domain only ever sees them opened."""

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from libs.common.crypto import Keyring
from services.task_agent.model import Holder, NewTask, Priority, RetryPolicy, Task, TaskState

metadata = sa.MetaData(schema="tasks")

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text),
    sa.Column("queue", sa.Text),
    sa.Column("priority", sa.SmallInteger),
    sa.Column("state", sa.Text),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("result", sa.LargeBinary),
    sa.Column("error_reason", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("error_kind", sa.Text),
    sa.Column("attempts", sa.Integer),
    sa.Column("max_attempts", sa.Integer),
    sa.Column("initial_backoff_s", sa.Float),
    sa.Column("max_backoff_s", sa.Float),
    sa.Column("backoff_multiplier", sa.Float),
    sa.Column("timeout_s", sa.Float),
    sa.Column("deadline_at", sa.DateTime(timezone=True)),
    sa.Column("fallback_type", sa.Text),
    sa.Column("parent_id", pg.UUID(as_uuid=True)),
    sa.Column("concurrency_key", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("labels", pg.JSONB),
    sa.Column("run_at", sa.DateTime(timezone=True)),
    sa.Column("dispatched_at", sa.DateTime(timezone=True)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("agent", sa.Text),
    sa.Column("progress", sa.Float),
    sa.Column("cancel_requested", sa.Boolean),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # Bumped by a trigger on every update.
    sa.Column("version", sa.BigInteger),
    sa.Column("trace_context", pg.JSONB),
    sa.Column("continuations", sa.LargeBinary),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("task_id", pg.UUID(as_uuid=True)),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("redriven_task_id", pg.UUID(as_uuid=True)),
)

task_types = sa.Table(
    "task_types",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("queue", sa.Text),
    sa.Column("max_attempts", sa.Integer),
    sa.Column("initial_backoff_s", sa.Float),
    sa.Column("max_backoff_s", sa.Float),
    sa.Column("backoff_multiplier", sa.Float),
    sa.Column("timeout_s", sa.Float),
    sa.Column("fallback_type", sa.Text),
    sa.Column("rate_limit_per_s", sa.Float),
    sa.Column("concurrency_limit", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

type_agents = sa.Table(
    "type_agents",
    metadata,
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True)),
)

NOW = sa.func.now()
PENDING = (TaskState.QUEUED.value, TaskState.RETRYING.value)


def payload_aad(task_id: uuid.UUID) -> bytes:
    return b"tasks.payload:" + task_id.bytes


def result_aad(task_id: uuid.UUID) -> bytes:
    return b"tasks.result:" + task_id.bytes


def continuations_aad(task_id: uuid.UUID) -> bytes:
    return b"tasks.continuations:" + task_id.bytes


def row_to_task(row: Any, keyring: Keyring) -> Task:
    return Task(
        id=row.id,
        type=row.type,
        state=TaskState(row.state),
        payload=keyring.decrypt(row.payload, payload_aad(row.id)),
        queue=row.queue,
        priority=Priority(row.priority),
        attempts=row.attempts,
        retry=RetryPolicy(
            row.max_attempts, row.initial_backoff_s, row.max_backoff_s, row.backoff_multiplier
        ),
        timeout_s=row.timeout_s,
        run_at=row.run_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=keyring.decrypt(row.result, result_aad(row.id)) if row.result is not None else None,
        error_reason=row.error_reason,
        error_message=row.error_message,
        error_kind=row.error_kind,
        idempotency_key=row.idempotency_key,
        deadline_at=row.deadline_at,
        fallback_type=row.fallback_type,
        concurrency_key=row.concurrency_key,
        parent_id=row.parent_id,
        labels=row.labels or {},
        started_at=row.started_at,
        finished_at=row.finished_at,
        progress=row.progress,
        agent=row.agent,
        version=row.version,
        trace_context=row.trace_context or {},
        continuations=keyring.decrypt(row.continuations, continuations_aad(row.id))
        if row.continuations is not None
        else None,
    )


def insert_values(
    new: NewTask, now: datetime, keyring: Keyring, holder: Holder | None = None
) -> dict[str, Any]:
    """The row of a new task; with a holder, already claimed by it (attempt 1)."""
    return {
        "id": new.id,
        "type": new.type,
        "queue": new.queue,
        "priority": int(new.priority),
        "state": (TaskState.RUNNING if holder else TaskState.QUEUED).value,
        "payload": keyring.encrypt(new.payload, payload_aad(new.id)),
        "attempts": 1 if holder else 0,
        "agent": holder.agent if holder else None,
        "lease_expires_at": now + timedelta(seconds=holder.lease_s) if holder else None,
        "started_at": now if holder else None,
        "max_attempts": new.retry.max_attempts,
        "initial_backoff_s": new.retry.initial_backoff_s,
        "max_backoff_s": new.retry.max_backoff_s,
        "backoff_multiplier": new.retry.multiplier,
        "timeout_s": new.timeout_s,
        "deadline_at": new.deadline_at,
        "fallback_type": new.fallback_type,
        "parent_id": new.parent_id,
        "concurrency_key": new.concurrency_key,
        "idempotency_key": new.idempotency_key,
        "labels": new.labels,
        "trace_context": new.trace_context,
        "continuations": keyring.encrypt(new.continuations, continuations_aad(new.id))
        if new.continuations is not None
        else None,
        "run_at": new.run_at,
        # Due work goes on its stream now, later work into the delayed set: either way the
        # reconciler looks again only if it is still pending well after this time.
        "dispatched_at": max(now, new.run_at),
        "progress": 0.0,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
    }


def stored_task(new: NewTask, now: datetime, holder: Holder | None = None) -> Task:
    """The task as `insert_values` stores it, without reading it back (nor opening it)."""
    return Task(
        id=new.id,
        type=new.type,
        state=TaskState.RUNNING if holder else TaskState.QUEUED,
        payload=new.payload,
        queue=new.queue,
        priority=new.priority,
        attempts=1 if holder else 0,
        agent=holder.agent if holder else None,
        started_at=now if holder else None,
        retry=new.retry,
        timeout_s=new.timeout_s,
        run_at=new.run_at,
        created_at=now,
        updated_at=now,
        idempotency_key=new.idempotency_key,
        deadline_at=new.deadline_at,
        fallback_type=new.fallback_type,
        concurrency_key=new.concurrency_key,
        parent_id=new.parent_id,
        labels=dict(new.labels),
        version=1,
        trace_context=new.trace_context,
        continuations=new.continuations,
    )
