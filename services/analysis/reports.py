"""Reports over the rollups: counts, rates and duration percentiles per group.

Durations are kept as histograms with fixed log-spaced buckets (four per doubling, from 1 ms
to about two days), so a percentile read from them is within 10% of the true value and any
two histograms add up."""

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from libs.common.errors import InvalidArgument

_FIRST_BOUND_S = 0.001
_STEPS_PER_DOUBLING = 4
# Upper bounds of every bucket but the last, which is open above.
BOUNDS: tuple[float, ...] = tuple(
    _FIRST_BOUND_S * 2 ** (i / _STEPS_PER_DOUBLING) for i in range(_STEPS_PER_DOUBLING * 28)
)
BUCKETS = len(BOUNDS) + 1
# The largest relative error of a percentile: half a bucket, in log terms.
PRECISION = 2 ** (1 / (2 * _STEPS_PER_DOUBLING)) - 1

GROUPS = ("type", "queue", "version")
MAX_WINDOW_S = 90 * 24 * 3600
TOP_ERRORS = 5


def bucket_of(seconds: float) -> int:
    return bisect.bisect_right(BOUNDS, seconds)


def bucket_value(index: int) -> float:
    """The value that stands for a bucket: its geometric middle."""
    if index == 0:
        return BOUNDS[0] / 2
    if index >= len(BOUNDS):
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[index - 1] * BOUNDS[index])


def percentile(histogram: Sequence[int], q: float) -> float:
    """The `q`-th quantile (0 < q ≤ 1) of the durations in `histogram`; 0.0 when empty."""
    total = sum(histogram)
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(len(histogram) - 1)


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def add_histograms(into: list[int], other: Sequence[int]) -> None:
    for index, count in enumerate(other):
        into[index] += count


def check_request(window_s: int, group_by: str) -> None:
    if window_s <= 0 or window_s > MAX_WINDOW_S:
        raise InvalidArgument(
            f"window_s must be between 1 and {MAX_WINDOW_S} seconds (90 days), not {window_s}"
        )
    if group_by not in GROUPS:
        raise InvalidArgument(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")


@dataclass(frozen=True)
class ErrorSignature:
    fingerprint: str
    count: int
    first_seen: datetime
    last_seen: datetime
    example: str


@dataclass
class GroupTotals:
    """What the store sums up for one group over the window."""

    counts: dict[str, int] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    errors: list[ErrorSignature] = field(default_factory=list)


@dataclass(frozen=True)
class ReportRow:
    group: str
    total: int
    succeeded: int
    failed: int
    success_rate: float
    throughput_per_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    retry_rate: float
    dead_letters: int
    top_errors: list[ErrorSignature]


@dataclass(frozen=True)
class Report:
    start: datetime
    end: datetime
    rows: list[ReportRow]


def report_row(group: str, totals: GroupTotals, window_s: float) -> ReportRow:
    """`total` counts finished tasks (succeeded or failed); `retry_rate` is the share of
    attempts that failed and were retried."""
    succeeded = totals.counts.get("succeeded", 0)
    failed = totals.counts.get("failed", 0)
    retried = totals.counts.get("retried", 0)
    total = succeeded + failed
    top = sorted(totals.errors, key=lambda e: (-e.count, e.fingerprint))[:TOP_ERRORS]
    return ReportRow(
        group=group,
        total=total,
        succeeded=succeeded,
        failed=failed,
        success_rate=ratio(succeeded, total),
        throughput_per_s=total / window_s,
        p50_s=percentile(totals.histogram, 0.50),
        p95_s=percentile(totals.histogram, 0.95),
        p99_s=percentile(totals.histogram, 0.99),
        retry_rate=ratio(retried, total + retried),
        dead_letters=totals.counts.get("dead_lettered", 0),
        top_errors=top,
    )


class History(Protocol):
    async def totals_since(self, since: datetime, group_by: str) -> dict[str, GroupTotals]: ...


class Reports:
    def __init__(self, history: History) -> None:
        self._history = history

    async def report(self, window_s: int, group_by: str, now: datetime) -> Report:
        check_request(window_s, group_by)
        start = now - timedelta(seconds=window_s)
        groups = await self._history.totals_since(start, group_by)
        rows = [report_row(g, groups[g], window_s) for g in sorted(groups)]
        return Report(start, now, rows)
