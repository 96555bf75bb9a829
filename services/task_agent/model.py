"""Tasks as the domain sees them: states, retry policy, the validated submission."""

import enum
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime


class TaskState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


class Priority(enum.IntEnum):
    LOW = 1
    NORMAL = 2
    HIGH = 3


class DeadLetterReason(enum.StrEnum):
    RETRIES_EXHAUSTED = "retries_exhausted"
    NON_RETRYABLE = "non_retryable"
    TIMEOUT = "timeout"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NO_HANDLER = "no_handler"
    UNDECODABLE_PAYLOAD = "undecodable_payload"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    multiplier: float = 2.0

    def problems(self) -> list[str]:
        found = []
        if not 1 <= self.max_attempts <= 100:
            found.append("retry.max_attempts must be between 1 and 100")
        if not 0 <= self.initial_backoff_s <= 86_400:
            found.append("retry.initial_backoff_s must be between 0 and 86400")
        if not self.initial_backoff_s <= self.max_backoff_s <= 86_400:
            found.append("retry.max_backoff_s must be between initial_backoff_s and 86400")
        if not 1 <= self.multiplier <= 10:
            found.append("retry.multiplier must be between 1 and 10")
        return found

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, initial * multiplier^(attempt-1))]."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class NewTask:
    """A submission that passed validation, with the type's defaults filled in."""

    type: str
    payload: bytes
    queue: str
    priority: Priority
    retry: RetryPolicy
    timeout_s: float
    run_at: datetime
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    idempotency_key: str | None = None
    deadline_at: datetime | None = None
    fallback_type: str | None = None
    concurrency_key: str | None = None
    parent_id: uuid.UUID | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # W3C headers of the submission's trace: each execution is a span of it.
    trace_context: dict[str, str] = field(default_factory=dict)
    # Encoded tasks_pb2.Continuations: what the task submits once it succeeds.
    continuations: bytes | None = None


@dataclass(frozen=True)
class Holder:
    """An agent that takes new tasks as it stores them (eager execution)."""

    agent: str
    lease_s: float


@dataclass(frozen=True)
class Task:
    id: uuid.UUID
    type: str
    state: TaskState
    payload: bytes
    queue: str
    priority: Priority
    attempts: int
    retry: RetryPolicy
    timeout_s: float
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    result: bytes | None = None
    error_reason: str | None = None
    error_message: str | None = None
    error_kind: str | None = None
    idempotency_key: str | None = None
    deadline_at: datetime | None = None
    fallback_type: str | None = None
    concurrency_key: str | None = None
    parent_id: uuid.UUID | None = None
    labels: dict[str, str] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    agent: str | None = None
    # Grows with every change: of two copies of a task, the higher version is the newer.
    version: int = 0
    trace_context: dict[str, str] = field(default_factory=dict)
    continuations: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TaskType:
    """A handler's defaults, as advertised by the agents that serve it."""

    name: str
    queue: str = "default"
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 60.0
    fallback_type: str | None = None
    rate_limit_per_s: float = 0.0
    concurrency_limit: int = 0
    agents: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeadLetter:
    id: uuid.UUID
    task: Task
    reason: str
    created_at: datetime
    redriven_task_id: uuid.UUID | None = None
