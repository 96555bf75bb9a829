"""The REST API's JSON shapes."""

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from agentry.tasks.v1 import tasks_pb2


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"


PRIORITY_TO_PROTO = {
    Priority.low: tasks_pb2.PRIORITY_LOW,
    Priority.normal: tasks_pb2.PRIORITY_NORMAL,
    Priority.high: tasks_pb2.PRIORITY_HIGH,
}


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_attempts: int | None = Field(None, ge=1, le=100)
    initial_backoff_s: float | None = Field(None, ge=0)
    max_backoff_s: float | None = Field(None, ge=0)
    multiplier: float | None = Field(None, ge=1)


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=128)
    payload: Any = None
    queue: str | None = None
    priority: Priority | None = None
    idempotency_key: str | None = Field(None, max_length=200)
    retry: RetryIn | None = None
    timeout_s: float | None = Field(None, gt=0)
    deadline_s: float | None = Field(None, gt=0)
    delay_s: float | None = Field(None, ge=0)
    run_at: datetime | None = None
    fallback_type: str | None = None
    concurrency_key: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def to_proto(self, idempotency_key: str | None = None) -> tasks_pb2.TaskSpec:
        spec = tasks_pb2.TaskSpec(
            type=self.type,
            payload=json.dumps(self.payload, separators=(",", ":")).encode(),
            queue=self.queue or "",
            priority=PRIORITY_TO_PROTO[self.priority]
            if self.priority
            else tasks_pb2.PRIORITY_UNSPECIFIED,
            idempotency_key=self.idempotency_key or idempotency_key or "",
            timeout_s=self.timeout_s or 0,
            deadline_s=self.deadline_s or 0,
            delay_s=self.delay_s or 0,
            fallback_type=self.fallback_type or "",
            concurrency_key=self.concurrency_key or "",
            labels=self.labels,
        )
        if self.retry is not None:
            spec.retry.CopyFrom(tasks_pb2.RetryPolicy(**self.retry.model_dump(exclude_none=True)))
        if self.run_at is not None:
            spec.run_at.FromDatetime(self.run_at)
        return spec


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskIn] = Field(min_length=1, max_length=1000)


class TaskErrorOut(BaseModel):
    reason: str
    message: str
    kind: str


class TaskOut(BaseModel):
    id: str
    type: str
    state: str
    payload: Any
    result: Any
    error: TaskErrorOut | None
    attempts: int
    queue: str
    priority: str
    idempotency_key: str | None
    labels: dict[str, str]
    progress: float
    agent: str | None
    parent_id: str | None
    created_at: datetime | None
    updated_at: datetime | None
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_proto(cls, task: tasks_pb2.Task) -> "TaskOut":
        return cls(
            id=task.id,
            type=task.type,
            state=tasks_pb2.TaskState.Name(task.state).removeprefix("TASK_STATE_"),
            payload=json_of(task.payload),
            result=json_of(task.result),
            error=TaskErrorOut(
                reason=task.error.reason, message=task.error.message, kind=task.error.kind
            )
            if task.HasField("error")
            else None,
            attempts=task.attempts,
            queue=task.queue,
            priority=tasks_pb2.Priority.Name(task.priority).removeprefix("PRIORITY_").lower(),
            idempotency_key=task.idempotency_key or None,
            labels=dict(task.labels),
            progress=task.progress,
            agent=task.agent or None,
            parent_id=task.parent_id or None,
            created_at=time_of(task, "created_at"),
            updated_at=time_of(task, "updated_at"),
            run_at=time_of(task, "run_at"),
            started_at=time_of(task, "started_at"),
            finished_at=time_of(task, "finished_at"),
        )


class BatchOut(BaseModel):
    tasks: list[TaskOut]


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_page_token: str | None


class DeadLetterOut(BaseModel):
    id: str
    reason: str
    created_at: datetime | None
    redriven_task_id: str | None
    task: TaskOut

    @classmethod
    def from_proto(cls, letter: tasks_pb2.DeadLetter) -> "DeadLetterOut":
        return cls(
            id=letter.id,
            reason=letter.reason,
            created_at=time_of(letter, "created_at"),
            redriven_task_id=letter.redriven_task_id or None,
            task=TaskOut.from_proto(letter.task),
        )


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_page_token: str | None


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Replaces the original payload when given (even as null).
    payload: Any = None


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


def json_of(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


def time_of(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue: str | None = None
    type: str | None = None
    older_than: datetime | None = None


class PurgeOut(BaseModel):
    purged: int


class TaskTypeOut(BaseModel):
    name: str
    queue: str
    retry: RetryIn
    timeout_s: float
    fallback_type: str | None
    rate_limit_per_s: float
    agents: list[str]

    @classmethod
    def from_proto(cls, t: tasks_pb2.TaskType) -> "TaskTypeOut":
        return cls(
            name=t.name,
            queue=t.queue,
            retry=RetryIn(
                max_attempts=t.retry.max_attempts,
                initial_backoff_s=t.retry.initial_backoff_s,
                max_backoff_s=t.retry.max_backoff_s,
                multiplier=t.retry.multiplier,
            ),
            timeout_s=t.timeout_s,
            fallback_type=t.fallback_type or None,
            rate_limit_per_s=t.rate_limit_per_s,
            agents=list(t.agents),
        )


class TaskTypeList(BaseModel):
    items: list[TaskTypeOut]


class QueueStatsOut(BaseModel):
    queue: str
    depth: int
    lag_s: float
    running: int


class QueueStatsList(BaseModel):
    items: list[QueueStatsOut]
