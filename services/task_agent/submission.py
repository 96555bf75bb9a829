"""Validation of what clients submit. A submission either becomes a complete `NewTask`
with the type's defaults, or raises InvalidArgument saying what is wrong."""

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from libs.common.errors import InvalidArgument
from libs.common.task_ids import task_id_for
from services.task_agent import continuations
from services.task_agent.model import NewTask, Priority, RetryPolicy, TaskType

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_DELAY = timedelta(days=365)
_MAX_TIMEOUT_S = 86_400.0
_MAX_LABELS = 32


@dataclass(frozen=True)
class Submission:
    """A client's request as received; zero values mean "the type's default"."""

    type: str
    payload: bytes
    queue: str = ""
    priority: int = 0
    idempotency_key: str = ""
    retry: RetryPolicy | None = None
    timeout_s: float = 0.0
    deadline_s: float = 0.0
    delay_s: float = 0.0
    run_at: datetime | None = None
    fallback_type: str = ""
    concurrency_key: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # The trace the task's executions continue; empty: the submitting call's.
    trace_context: dict[str, str] = field(default_factory=dict)
    # Encoded tasks_pb2.Continuations; empty: none.
    then: bytes = b""


def check_payload(payload: bytes, max_bytes: int) -> bytes:
    if len(payload) > max_bytes:
        raise InvalidArgument(f"payload is {len(payload)} bytes, over the limit of {max_bytes}")
    if not payload:
        return b"null"
    try:
        json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"payload is not valid JSON: {exc}") from None
    return payload


def _retry(asked: RetryPolicy | None, default: RetryPolicy) -> RetryPolicy:
    if asked is None:
        return default
    policy = RetryPolicy(
        max_attempts=asked.max_attempts or default.max_attempts,
        initial_backoff_s=asked.initial_backoff_s or default.initial_backoff_s,
        max_backoff_s=asked.max_backoff_s or max(default.max_backoff_s, asked.initial_backoff_s),
        multiplier=asked.multiplier or default.multiplier,
    )
    problems = policy.problems()
    if problems:
        raise InvalidArgument("bad retry policy: " + "; ".join(problems))
    return policy


def validate(
    sub: Submission,
    types: dict[str, TaskType],
    max_payload_bytes: int,
    now: datetime,
    trace_context: dict[str, str] | None = None,
) -> NewTask:
    """`trace_context`: the submission's, which the task's executions continue."""
    if not sub.type:
        raise InvalidArgument("type is required")
    task_type = types.get(sub.type)
    if task_type is None:
        raise InvalidArgument(f"unknown task type {sub.type!r}: no agent serves it")
    payload = check_payload(sub.payload, max_payload_bytes)
    if sub.queue and not _NAME.match(sub.queue):
        raise InvalidArgument(f"queue {sub.queue!r} is not a valid name")
    try:
        priority = Priority(sub.priority) if sub.priority else Priority.NORMAL
    except ValueError:
        raise InvalidArgument(f"unknown priority {sub.priority}") from None
    if len(sub.idempotency_key) > 200:
        raise InvalidArgument("idempotency_key is longer than 200 characters")
    if not 0 <= sub.timeout_s <= _MAX_TIMEOUT_S:
        raise InvalidArgument(f"timeout_s must be between 0 and {_MAX_TIMEOUT_S:.0f}")
    # Also refuses NaN and infinity, which timedelta cannot hold.
    if not 0 <= sub.deadline_s <= _MAX_DELAY.total_seconds():
        raise InvalidArgument("deadline_s must be between 0 and one year")
    if sub.delay_s and sub.run_at:
        raise InvalidArgument("give delay_s or run_at, not both")
    if not 0 <= sub.delay_s <= _MAX_DELAY.total_seconds():
        raise InvalidArgument("delay_s must be between 0 and one year")
    run_at = sub.run_at or now + timedelta(seconds=sub.delay_s)
    if run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=UTC)
    if run_at - now > _MAX_DELAY:
        raise InvalidArgument("run_at is more than a year away")
    fallback = sub.fallback_type or task_type.fallback_type or None
    if fallback is not None:
        if fallback == sub.type:
            raise InvalidArgument("fallback_type must differ from the task's own type")
        if fallback not in types:
            raise InvalidArgument(f"unknown fallback type {fallback!r}: no agent serves it")
    if len(sub.labels) > _MAX_LABELS:
        raise InvalidArgument(f"at most {_MAX_LABELS} labels")
    return NewTask(
        id=task_id_for(sub.idempotency_key) if sub.idempotency_key else uuid.uuid4(),
        type=sub.type,
        payload=payload,
        queue=sub.queue or task_type.queue,
        priority=priority,
        retry=_retry(sub.retry, task_type.retry),
        timeout_s=sub.timeout_s or task_type.timeout_s,
        run_at=max(run_at, now),
        idempotency_key=sub.idempotency_key or None,
        deadline_at=now + timedelta(seconds=sub.deadline_s) if sub.deadline_s else None,
        fallback_type=fallback,
        concurrency_key=sub.concurrency_key or None,
        labels=dict(sub.labels),
        trace_context=trace_context or {},
        continuations=continuations.check(sub.then, max_payload_bytes) if sub.then else None,
    )
