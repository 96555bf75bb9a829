"""What happens after a failed attempt: another attempt later, or the end of the task."""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.task_agent.model import DeadLetterReason, Task


@dataclass(frozen=True)
class Decision:
    retry_at: datetime | None
    reason: DeadLetterReason | None

    @property
    def retry(self) -> bool:
        return self.retry_at is not None


def after_failure(
    task: Task,
    retryable: bool,
    timed_out: bool,
    now: datetime,
    rng: random.Random | None = None,
    not_before_s: float = 0.0,
) -> Decision:
    if not retryable:
        return Decision(None, DeadLetterReason.NON_RETRYABLE)
    if task.attempts >= task.retry.max_attempts:
        reason = DeadLetterReason.TIMEOUT if timed_out else DeadLetterReason.RETRIES_EXHAUSTED
        return Decision(None, reason)
    wait_s = max(task.retry.backoff_s(task.attempts, rng), not_before_s)
    retry_at = now + timedelta(seconds=wait_s)
    if task.deadline_at is not None and retry_at >= task.deadline_at:
        return Decision(None, DeadLetterReason.DEADLINE_EXCEEDED)
    return Decision(retry_at, None)
