"""Fingerprints, percentiles from duration histograms, rates and report requests."""

import json
from datetime import UTC, datetime

import pytest

from libs.common.errors import InvalidArgument
from libs.common.events import make_events
from services.analysis.fingerprints import fingerprint
from services.analysis.history import fold
from services.analysis.reports import (
    BUCKETS,
    PRECISION,
    GroupTotals,
    bucket_of,
    check_request,
    percentile,
    report_row,
)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("order 1234 not found", "order 98 not found"),
        (
            "task 3f2a6b1c-1111-2222-3333-444455556666 timed out",
            "task 0b9e8d7c-aaaa-bbbb-cccc-ddddeeeeffff timed out",
        ),
        ("cannot open /var/data/in/42.json", "cannot open /tmp/x/y.csv"),
        ("bad pointer 0xdeadbeef", "bad pointer 0x1f"),
        ("failed at 2026-11-27T13:16:35Z", "failed at 2025-01-02T03:04:05.123+02:00"),
        ("object 9f86d081884c7d65 is gone", "object 0a1b2c3d4e5f6a7b is gone"),
        ("timeout after 30s", "timeout after 5s"),
    ],
)
def test_errors_differing_only_in_particulars_share_a_fingerprint(one: str, other: str) -> None:
    assert fingerprint(one) == fingerprint(other)


def test_different_errors_have_different_fingerprints() -> None:
    assert fingerprint("order 1 not found") != fingerprint("order 1 was cancelled")
    assert fingerprint("order 12 not found") == "order <n> not found"


@pytest.mark.parametrize("true_value", [0.004, 0.05, 0.3, 1.0, 7.5, 120.0, 3600.0])
def test_a_percentile_from_a_histogram_is_within_bucket_precision(true_value: float) -> None:
    histogram = [0] * BUCKETS
    histogram[bucket_of(true_value)] += 100
    assert percentile(histogram, 0.5) == pytest.approx(true_value, rel=PRECISION)


def test_percentiles_of_a_spread_of_durations() -> None:
    durations = [i / 100 for i in range(1, 1001)]  # 0.01 s .. 10 s, evenly
    histogram = [0] * BUCKETS
    for d in durations:
        histogram[bucket_of(d)] += 1
    assert percentile(histogram, 0.50) == pytest.approx(5.0, rel=PRECISION)
    assert percentile(histogram, 0.95) == pytest.approx(9.5, rel=PRECISION)
    assert percentile(histogram, 0.99) == pytest.approx(9.9, rel=PRECISION)
    assert percentile([0] * BUCKETS, 0.5) == 0.0


def test_report_rates() -> None:
    totals = GroupTotals(counts={"succeeded": 6, "failed": 2, "retried": 2, "dead_lettered": 1})
    row = report_row("echo", totals, window_s=4)
    assert (row.total, row.succeeded, row.failed, row.dead_letters) == (8, 6, 2, 1)
    assert row.success_rate == 0.75
    assert row.throughput_per_s == 2.0
    assert row.retry_rate == 0.2
    empty = report_row("none", GroupTotals(), window_s=60)
    assert (empty.success_rate, empty.retry_rate, empty.p50_s) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("window_s", "group_by"),
    [(0, "type"), (-5, "type"), (90 * 86400 + 1, "type"), (60, "agent"), (60, "")],
)
def test_bad_report_requests_are_refused(window_s: int, group_by: str) -> None:
    with pytest.raises(InvalidArgument):
        check_request(window_s, group_by)


def test_task_events_fold_into_rollups_and_fingerprints() -> None:
    def data(type_: str, error: str | None = None, took: float | None = None) -> dict:
        return {
            "type": type_,
            "queue": "default",
            "error": error,
            "started_at": 100.0 if took is not None else None,
            "finished_at": 100.0 + took if took is not None else None,
        }

    events = make_events(
        [
            ("task.succeeded", "task/1", data("echo", took=0.5)),
            ("task.retrying", "task/2", data("fail", error="order 7 not found")),
            ("task.failed", "task/2", data("fail", error="order 8 not found", took=2.0)),
            ("task.dead_lettered", "task/2", data("fail", error="order 8 not found")),
            ("task.queued", "task/3", data("echo")),
        ],
        "task_agent/a",
    )
    folded = fold(events)
    by_outcome = {
        (key.type, outcome): rollup.count for (key, outcome), rollup in folded.rollups.items()
    }
    assert by_outcome == {
        ("echo", "succeeded"): 1,
        ("fail", "retried"): 1,
        ("fail", "failed"): 1,
        ("fail", "dead_lettered"): 1,
    }
    [((key, fp), seen)] = folded.errors.items()
    assert (key.type, fp, seen.count) == ("fail", "order <n> not found", 2)
    assert json.loads(events[1].data)["error"] == seen.example
    assert key.minute.tzinfo is UTC and key.minute <= datetime.now(UTC)
    assert sum(folded.events.values()) == 5
