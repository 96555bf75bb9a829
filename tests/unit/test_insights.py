"""One incident is one insight: the lifecycle of insights across rounds, the page tokens a
client hands back, and the queue lag the task agent's events carry."""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.errors import InvalidArgument
from libs.common.events import make_event
from libs.common.paging import page_token, parse_page_token
from services.analysis.detectors import Finding
from services.analysis.history import fold
from services.analysis.insights import Insight, reconcile
from services.analysis.reports import percentile
from services.task_agent.changes import task_event_data
from services.task_agent.model import Priority, RetryPolicy, Task, TaskState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COOLDOWN = timedelta(minutes=15)


def _finding(minute: int, severity: str = "warning") -> Finding:
    start = T0 + timedelta(minutes=minute)
    return Finding(
        "anomaly.failure_rate",
        "payments.charge",
        severity,
        start,
        start + timedelta(minutes=1),
        {"value": 0.4, "expected": 0.02},
    )


def _rounds(found_at: set[int], minutes: int) -> list[Insight]:
    """Rounds a minute apart; a finding in the minutes of `found_at`. Every insight opened."""
    opened: list[Insight] = []
    open_now: dict[str, Insight] = {}
    for minute in range(minutes):
        now = T0 + timedelta(minutes=minute + 1, seconds=20)
        findings = [_finding(minute)] if minute in found_at else []
        changes = reconcile(list(open_now.values()), findings, now, COOLDOWN)
        opened += changes.opened
        open_now.update({i.id: i for i in [*changes.opened, *changes.updated]})
        for gone in changes.resolved:
            del open_now[gone.id]
    return opened


def test_a_condition_that_lasts_is_one_insight() -> None:
    assert len(_rounds(set(range(10, 40)), 60)) == 1


def test_a_recurrence_within_the_cooldown_does_not_alert_again() -> None:
    # Gone for ten minutes, back: still the same incident.
    assert len(_rounds({*range(10, 15), *range(25, 30)}, 60)) == 1


def test_a_recurrence_after_the_cooldown_is_a_new_insight() -> None:
    assert len(_rounds({*range(10, 15), *range(40, 45)}, 70)) == 2


def test_an_open_insight_keeps_its_worst_severity_and_grows_its_window() -> None:
    first = reconcile([], [_finding(10, "critical")], T0, COOLDOWN).opened[0]
    later = reconcile([first], [_finding(12)], T0 + timedelta(minutes=3), COOLDOWN)
    [updated] = later.updated
    assert updated.severity == "critical"
    assert (updated.window_start, updated.window_end) == (
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=13),
    )
    resolved = reconcile([updated], [], T0 + timedelta(minutes=13) + COOLDOWN, COOLDOWN)
    assert [i.state for i in resolved.resolved] == ["resolved"]


def test_page_tokens_come_back_as_given_and_bad_ones_are_refused() -> None:
    cursor = (T0, uuid.UUID("9a1e7bb2-61a4-4d8d-9f6e-0d0c6b2b8a11"))
    assert parse_page_token(page_token(cursor)) == cursor
    assert parse_page_token("") is None
    # A token of another shape, even one whose id is a number, is refused too.
    numbered = base64.urlsafe_b64encode(json.dumps([T0.isoformat(), 5]).encode()).decode()
    for bad in ("not-a-token", page_token((T0, "nope")), "eyJ9", numbered):
        with pytest.raises(InvalidArgument, match="page_token"):
            parse_page_token(bad)


def test_the_task_agents_start_event_gives_the_queue_lag() -> None:
    due = T0
    task = Task(
        id=uuid.uuid4(),
        type="email.send",
        state=TaskState.RUNNING,
        payload=b"",
        queue="mail",
        priority=Priority.NORMAL,
        attempts=1,
        retry=RetryPolicy(),
        timeout_s=30,
        run_at=due,
        created_at=due,
        updated_at=due,
        started_at=due + timedelta(seconds=42),
    )
    event = make_event("task.started", f"task/{task.id}", task_event_data(task), "task_agent/a")
    event.time.FromDatetime(due + timedelta(seconds=42))
    [(key, lags)] = fold([event]).lags.items()
    assert (key.type, key.queue, lags.count) == ("email.send", "mail", 1)
    assert percentile(lags.buckets, 0.5) == pytest.approx(42, rel=0.1)
