"""Protobuf <-> domain for TaskService, and nothing else."""

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from agentry.tasks.v1 import tasks_pb2
from libs.common.errors import InvalidArgument
from services.task_agent.model import DeadLetter, RetryPolicy, Task, TaskState, TaskType
from services.task_agent.submission import Submission


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def retry_to_proto(policy: RetryPolicy) -> tasks_pb2.RetryPolicy:
    return tasks_pb2.RetryPolicy(
        max_attempts=policy.max_attempts,
        initial_backoff_s=policy.initial_backoff_s,
        max_backoff_s=policy.max_backoff_s,
        multiplier=policy.multiplier,
    )


def submission(spec: tasks_pb2.TaskSpec) -> Submission:
    retry = None
    if spec.HasField("retry"):
        retry = RetryPolicy(
            spec.retry.max_attempts,
            spec.retry.initial_backoff_s,
            spec.retry.max_backoff_s,
            spec.retry.multiplier,
        )
    return Submission(
        type=spec.type,
        payload=spec.payload,
        queue=spec.queue,
        priority=spec.priority,
        idempotency_key=spec.idempotency_key,
        retry=retry,
        timeout_s=spec.timeout_s,
        deadline_s=spec.deadline_s,
        delay_s=spec.delay_s,
        run_at=from_timestamp(spec.run_at) if spec.HasField("run_at") else None,
        fallback_type=spec.fallback_type,
        concurrency_key=spec.concurrency_key,
        labels=dict(spec.labels),
        trace_context=dict(spec.trace_context),
        then=spec.then.SerializeToString() if spec.HasField("then") else b"",
    )


def state_from_proto(value: int) -> TaskState | None:
    if value == tasks_pb2.TASK_STATE_UNSPECIFIED:
        return None
    try:
        name = tasks_pb2.TaskState.Name(tasks_pb2.TaskState.ValueType(value))
        return TaskState(name.removeprefix("TASK_STATE_"))
    except ValueError:
        raise InvalidArgument(f"unknown task state {value}") from None


def task_to_proto(task: Task) -> tasks_pb2.Task:
    message = tasks_pb2.Task(
        id=str(task.id),
        type=task.type,
        state=tasks_pb2.TaskState.Value(f"TASK_STATE_{task.state.value}"),
        payload=task.payload,
        result=task.result or b"",
        attempts=task.attempts,
        queue=task.queue,
        priority=tasks_pb2.Priority.ValueType(int(task.priority)),
        idempotency_key=task.idempotency_key or "",
        retry=retry_to_proto(task.retry),
        timeout_s=task.timeout_s,
        fallback_type=task.fallback_type or "",
        concurrency_key=task.concurrency_key or "",
        labels=task.labels,
        created_at=timestamp(task.created_at),
        updated_at=timestamp(task.updated_at),
        run_at=timestamp(task.run_at),
        started_at=timestamp(task.started_at),
        finished_at=timestamp(task.finished_at),
        progress=task.progress,
        agent=task.agent or "",
        parent_id=str(task.parent_id) if task.parent_id else "",
    )
    if task.error_message or task.error_reason:
        message.error.CopyFrom(
            tasks_pb2.TaskError(
                reason=task.error_reason or "",
                message=task.error_message or "",
                kind=task.error_kind or "",
            )
        )
    return message


def dead_letter_to_proto(letter: DeadLetter) -> tasks_pb2.DeadLetter:
    return tasks_pb2.DeadLetter(
        id=str(letter.id),
        task=task_to_proto(letter.task),
        reason=letter.reason,
        created_at=timestamp(letter.created_at),
        redriven_task_id=str(letter.redriven_task_id) if letter.redriven_task_id else "",
    )


def task_type_to_proto(task_type: TaskType) -> tasks_pb2.TaskType:
    return tasks_pb2.TaskType(
        name=task_type.name,
        queue=task_type.queue,
        retry=retry_to_proto(task_type.retry),
        timeout_s=task_type.timeout_s,
        fallback_type=task_type.fallback_type or "",
        rate_limit_per_s=task_type.rate_limit_per_s,
        agents=list(task_type.agents),
    )
