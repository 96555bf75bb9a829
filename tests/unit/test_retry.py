"""The retry policy's backoff and validation, and the decision taken after a failed attempt."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.task_agent.model import DeadLetterReason, Priority, RetryPolicy, Task, TaskState
from services.task_agent.retry import after_failure

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=8.0, multiplier=2.0)


def _task(attempts: int, policy: RetryPolicy = POLICY, deadline_at: datetime | None = None) -> Task:
    return Task(
        id=uuid.uuid4(),
        type="fail",
        state=TaskState.RUNNING,
        payload=b"null",
        queue="default",
        priority=Priority.NORMAL,
        attempts=attempts,
        retry=policy,
        timeout_s=60.0,
        run_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        deadline_at=deadline_at,
    )


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (12, 8.0)],
)
def test_backoff_is_full_jitter_under_the_capped_exponential_ceiling(
    attempt: int, ceiling: float
) -> None:
    rng = random.Random(attempt)

    samples = [POLICY.backoff_s(attempt, rng) for _ in range(2000)]

    assert all(0 <= s <= ceiling for s in samples)
    # Spread over the whole range, not clustered near the ceiling: that is what jitter buys.
    assert min(samples) < 0.05 * ceiling
    assert max(samples) > 0.95 * ceiling
    assert len(set(samples)) > 1990


def test_backoff_without_a_given_rng_still_varies_within_bounds() -> None:
    samples = {POLICY.backoff_s(3) for _ in range(200)}

    assert all(0 <= s <= 2.0 for s in samples)
    assert len(samples) > 190


def test_backoff_with_multiplier_one_stays_under_the_initial_backoff() -> None:
    flat = RetryPolicy(max_attempts=10, initial_backoff_s=0.2, max_backoff_s=5.0, multiplier=1.0)
    rng = random.Random(0)

    assert all(0 <= flat.backoff_s(n, rng) <= 0.2 for n in range(1, 10) for _ in range(100))


def test_a_sound_policy_has_no_problems() -> None:
    assert RetryPolicy().problems() == []
    assert RetryPolicy(1, 0.0, 0.0, 1.0).problems() == []
    assert RetryPolicy(100, 86_400, 86_400, 10).problems() == []


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (RetryPolicy(max_attempts=0), "retry.max_attempts must be between 1 and 100"),
        (RetryPolicy(max_attempts=101), "retry.max_attempts must be between 1 and 100"),
        (
            RetryPolicy(initial_backoff_s=-1.0),
            "retry.initial_backoff_s must be between 0 and 86400",
        ),
        (
            RetryPolicy(initial_backoff_s=10.0, max_backoff_s=5.0),
            "retry.max_backoff_s must be between initial_backoff_s and 86400",
        ),
        (
            RetryPolicy(max_backoff_s=90_000.0),
            "retry.max_backoff_s must be between initial_backoff_s and 86400",
        ),
        (RetryPolicy(multiplier=0.5), "retry.multiplier must be between 1 and 10"),
        (RetryPolicy(multiplier=11.0), "retry.multiplier must be between 1 and 10"),
        (RetryPolicy(multiplier=float("nan")), "retry.multiplier must be between 1 and 10"),
    ],
)
def test_each_problem_is_named(policy: RetryPolicy, message: str) -> None:
    assert policy.problems() == [message]


def test_every_problem_is_reported_at_once() -> None:
    problems = RetryPolicy(0, -1.0, -2.0, 0.0).problems()

    assert len(problems) == 4


def test_a_non_retryable_failure_ends_the_task_even_with_attempts_left() -> None:
    decision = after_failure(_task(attempts=1), retryable=False, timed_out=False, now=NOW)

    assert not decision.retry
    assert decision.reason == DeadLetterReason.NON_RETRYABLE


def test_a_retryable_failure_with_attempts_left_is_retried_after_the_backoff() -> None:
    decision = after_failure(
        _task(attempts=2), retryable=True, timed_out=False, now=NOW, rng=random.Random(7)
    )

    assert decision.retry
    assert decision.reason is None
    expected = POLICY.backoff_s(2, random.Random(7))
    assert decision.retry_at == NOW + timedelta(seconds=expected)
    assert NOW <= decision.retry_at <= NOW + timedelta(seconds=1.0)


def test_a_timed_out_attempt_with_attempts_left_is_retried() -> None:
    decision = after_failure(_task(attempts=1), retryable=True, timed_out=True, now=NOW)

    assert decision.retry


def test_the_last_attempt_failing_exhausts_the_retries() -> None:
    decision = after_failure(_task(attempts=3), retryable=True, timed_out=False, now=NOW)

    assert not decision.retry
    assert decision.reason == DeadLetterReason.RETRIES_EXHAUSTED


def test_the_last_attempt_timing_out_ends_the_task_as_timed_out() -> None:
    decision = after_failure(_task(attempts=3), retryable=True, timed_out=True, now=NOW)

    assert not decision.retry
    assert decision.reason == DeadLetterReason.TIMEOUT


def test_no_retry_is_scheduled_at_or_past_the_deadline() -> None:
    decision = after_failure(
        _task(attempts=1, deadline_at=NOW), retryable=True, timed_out=False, now=NOW
    )

    assert not decision.retry
    assert decision.reason == DeadLetterReason.DEADLINE_EXCEEDED


def test_a_retry_before_the_deadline_is_scheduled() -> None:
    far = NOW + timedelta(hours=1)

    decision = after_failure(
        _task(attempts=1, deadline_at=far), retryable=True, timed_out=False, now=NOW
    )

    assert decision.retry
    assert decision.retry_at is not None
    assert decision.retry_at < far
