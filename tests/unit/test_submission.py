"""What a client may submit: the type's defaults fill the gaps, anything wrong is refused
with a message that says what."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.errors import InvalidArgument
from services.task_agent.model import Priority, RetryPolicy, TaskType
from services.task_agent.submission import Submission, check_payload, validate

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
MAX_PAYLOAD = 1024
FLAKY_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=2.0, multiplier=3.0)
TYPES = {
    "echo": TaskType("echo"),
    "sleep": TaskType("sleep", timeout_s=3600.0),
    "flaky": TaskType(
        "flaky", queue="slow", retry=FLAKY_RETRY, timeout_s=10.0, fallback_type="echo"
    ),
}


def _validate(**fields):
    fields.setdefault("type", "echo")
    fields.setdefault("payload", b"{}")
    return validate(Submission(**fields), TYPES, MAX_PAYLOAD, NOW)


def _refused(message: str, **fields) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _validate(**fields)


def test_unset_fields_take_the_types_defaults() -> None:
    new = _validate(type="flaky", payload=b'{"a": 1}')

    assert new.type == "flaky"
    assert new.payload == b'{"a": 1}'
    assert new.queue == "slow"
    assert new.priority == Priority.NORMAL
    assert new.retry == FLAKY_RETRY
    assert new.timeout_s == 10.0
    assert new.fallback_type == "echo"
    assert new.run_at == NOW
    assert new.idempotency_key is None
    assert new.deadline_at is None
    assert new.concurrency_key is None
    assert new.labels == {}


def test_given_fields_override_the_defaults() -> None:
    new = _validate(
        type="flaky",
        queue="urgent",
        priority=3,
        idempotency_key="order-7",
        timeout_s=2.5,
        deadline_s=30,
        fallback_type="sleep",
        concurrency_key="user-9",
        labels={"team": "web"},
    )

    assert new.queue == "urgent"
    assert new.priority == Priority.HIGH
    assert new.idempotency_key == "order-7"
    assert new.timeout_s == 2.5
    assert new.deadline_at == NOW + timedelta(seconds=30)
    assert new.fallback_type == "sleep"
    assert new.concurrency_key == "user-9"
    assert new.labels == {"team": "web"}


def test_each_submission_gets_its_own_id() -> None:
    assert _validate().id != _validate().id


@pytest.mark.parametrize(
    ("asked", "expected"),
    [(0, Priority.NORMAL), (1, Priority.LOW), (2, Priority.NORMAL), (3, Priority.HIGH)],
)
def test_priorities(asked: int, expected: Priority) -> None:
    assert _validate(priority=asked).priority == expected


@pytest.mark.parametrize("asked", [4, -1, 99])
def test_unknown_priorities_are_refused(asked: int) -> None:
    _refused(f"unknown priority {asked}", priority=asked)


def test_a_partial_retry_policy_is_completed_from_the_types() -> None:
    new = _validate(type="flaky", retry=RetryPolicy(2, 0.0, 0.0, 0.0))

    assert new.retry == RetryPolicy(2, 0.1, 2.0, 3.0)


def test_a_retry_policy_with_a_larger_initial_backoff_raises_the_cap_to_match() -> None:
    new = _validate(type="flaky", retry=RetryPolicy(0, 5.0, 0.0, 0.0))

    assert new.retry == RetryPolicy(5, 5.0, 5.0, 3.0)


def test_a_bad_retry_policy_is_refused_with_its_problems() -> None:
    _refused(
        "bad retry policy: retry.max_attempts must be between 1 and 100",
        retry=RetryPolicy(1000, 0.0, 0.0, 0.0),
    )


def test_delay_puts_the_run_later() -> None:
    assert _validate(delay_s=90).run_at == NOW + timedelta(seconds=90)


def test_run_at_is_kept_and_a_past_one_means_now() -> None:
    later = NOW + timedelta(hours=2)

    assert _validate(run_at=later).run_at == later
    assert _validate(run_at=NOW - timedelta(hours=2)).run_at == NOW


def test_a_naive_run_at_is_read_as_utc() -> None:
    naive = datetime(2025, 1, 1, 13, 0)

    assert _validate(run_at=naive).run_at == datetime(2025, 1, 1, 13, 0, tzinfo=UTC)


def test_delay_and_run_at_together_are_refused() -> None:
    _refused("give delay_s or run_at, not both", delay_s=5, run_at=NOW + timedelta(minutes=1))


@pytest.mark.parametrize("delay", [-1.0, 366 * 86_400.0, float("nan"), float("inf")])
def test_delays_out_of_range_are_refused(delay: float) -> None:
    _refused("delay_s must be between 0 and one year", delay_s=delay)


def test_run_at_more_than_a_year_away_is_refused() -> None:
    _refused("run_at is more than a year away", run_at=NOW + timedelta(days=400))


@pytest.mark.parametrize("timeout", [-1.0, 86_401.0, float("nan")])
def test_timeouts_out_of_range_are_refused(timeout: float) -> None:
    _refused("timeout_s must be between 0 and 86400", timeout_s=timeout)


@pytest.mark.parametrize("deadline", [-1.0, float("nan"), float("inf"), 1e300])
def test_deadlines_that_are_not_a_sane_number_of_seconds_are_refused(deadline: float) -> None:
    _refused("deadline_s must be between 0 and one year", deadline_s=deadline)


def test_the_types_fallback_applies_unless_the_submission_names_another() -> None:
    assert _validate(type="flaky").fallback_type == "echo"
    assert _validate(type="flaky", fallback_type="sleep").fallback_type == "sleep"
    assert _validate(type="echo").fallback_type is None


def test_a_task_cannot_fall_back_to_its_own_type() -> None:
    _refused("fallback_type must differ from the task's own type", fallback_type="echo")


def test_a_fallback_no_agent_serves_is_refused() -> None:
    _refused("unknown fallback type 'nowhere': no agent serves it", fallback_type="nowhere")


def test_a_types_own_fallback_must_be_served_too() -> None:
    types = {"lonely": TaskType("lonely", fallback_type="gone")}

    with pytest.raises(InvalidArgument, match="unknown fallback type 'gone'"):
        validate(Submission(type="lonely", payload=b"1"), types, MAX_PAYLOAD, NOW)


def test_the_type_is_required_and_must_be_served() -> None:
    _refused("type is required", type="")
    _refused("unknown task type 'nope': no agent serves it", type="nope")


@pytest.mark.parametrize("queue", ["-leading-dash", "has space", "x" * 129, "ünïcode"])
def test_bad_queue_names_are_refused(queue: str) -> None:
    _refused("is not a valid name", queue=queue)


def test_an_over_long_idempotency_key_is_refused() -> None:
    assert _validate(idempotency_key="k" * 200).idempotency_key == "k" * 200
    _refused("idempotency_key is longer than 200 characters", idempotency_key="k" * 201)


def test_too_many_labels_are_refused() -> None:
    assert len(_validate(labels={str(i): "v" for i in range(32)}).labels) == 32
    _refused("at most 32 labels", labels={str(i): "v" for i in range(33)})


def test_an_empty_payload_is_json_null() -> None:
    assert _validate(payload=b"").payload == b"null"


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b"[1, 2"])
def test_payloads_that_are_not_json_are_refused(payload: bytes) -> None:
    _refused("payload is not valid JSON", payload=payload)


def test_payloads_over_the_limit_are_refused() -> None:
    at_limit = b'"' + b"x" * (MAX_PAYLOAD - 2) + b'"'

    assert check_payload(at_limit, MAX_PAYLOAD) == at_limit
    with pytest.raises(InvalidArgument, match=f"1025 bytes, over the limit of {MAX_PAYLOAD}"):
        check_payload(at_limit + b" ", MAX_PAYLOAD)
