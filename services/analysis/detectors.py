"""Anomaly detection over the recent rollups: failure rate, p95 duration and queue lag per
task type.

- p95 duration and queue lag: the p95 of each run of `smooth_minutes` minutes (a minute of a
  few dozen tasks gives a p95 that moves by a factor from one minute to the next), in log
  space (durations change by factors), against the level before: the median of the earlier
  runs, with a robust median/MAD band (`series.noise_scale`). The last `shift_points` runs
  must all stand above it, each by a ratio (and, for lag, a number of seconds) that matters
  to a person: histogram buckets make long flat stretches whose smallest change the band
  alone finds very unlikely. `shift_points` exceeds `smooth_minutes`, so no single slow
  minute (which lifts every run it is in) makes a finding.
- failure rate: a count test, not a band (see `failure_rate`): failures are binomial counts,
  where a MAD of per-minute rates is 0 or blind.

Only rises are findings: a drop in failures or latency is nobody's incident. The defaults are
what `services/analysis/scenarios.py` measures (precision, recall, quiet histories)."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from services.analysis.reports import BUCKETS, add_histograms, percentile
from services.analysis.series import noise_scale

MINUTE = timedelta(minutes=1)
ATTEMPT_OUTCOMES = {"succeeded", "failed", "retried"}
FAILED_OUTCOMES = {"failed", "retried"}
TIMED_OUTCOMES = {"succeeded", "failed"}


@dataclass(frozen=True)
class Tuning:
    """The detectors' knobs; the defaults are what the shipped scenarios measure."""

    lookback_minutes: int = 72
    min_history: int = 8
    # failure rate
    rate_window: int = 3
    min_baseline_attempts: int = 100
    outlier_p: float = 1e-3
    min_baseline_rate: float = 1e-3
    min_failures: int = 5
    min_rate_rise: float = 0.05
    rate_ratio: float = 2.0
    max_p: float = 1e-6
    # p95 duration and queue lag, over runs of minutes: the last shift_points runs stand
    # shift_threshold robust sigmas above the median of the runs before
    shift_threshold: float = 2.0
    shift_points: int = 4
    smooth_minutes: int = 3
    min_durations: int = 20
    duration_ratio: float = 1.5
    min_starts: int = 10
    lag_ratio: float = 2.0
    min_lag_s: float = 5.0
    # a stalled queue: its due attempts stop starting
    stall_minutes: int = 3
    min_stalled_due: int = 10
    stall_share: float = 0.1
    min_starts_before: int = 30
    # patterns
    new_window: int = 5
    min_new_count: int = 3
    jump_window: int = 5
    jump_min_count: int = 10
    jump_ratio: float = 4.0
    jump_p: float = 1e-6
    concentration_window: int = 10
    concentration_min_failures: int = 10
    concentration_share: float = 0.6
    concentration_z: float = 4.0
    concentration_ratio: float = 2.0


DEFAULT_TUNING = Tuning()


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    severity: str
    window_start: datetime
    window_end: datetime
    evidence: dict[str, Any]


@dataclass
class MinuteStats:
    attempts: int = 0
    failures: int = 0
    # Attempts with a duration (succeeded or failed), in `durations`.
    timed: int = 0
    durations: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    starts: int = 0
    lags: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    # Attempts that became due in the minute.
    due: int = 0


@dataclass
class Cohort:
    attempts: list[int]
    failures: list[int]


@dataclass
class Recent:
    """The rollups of `minutes` minutes from `first` on, as the detectors read them. The
    store fills it from the tables, the scenarios from generated histories."""

    first: datetime
    minutes: int
    types: dict[str, list[MinuteStats]] = field(default_factory=dict)
    # (type, fingerprint) -> count per minute
    errors: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # (type, fingerprint) -> when it was first seen in all the history kept
    first_seen: dict[tuple[str, str], datetime] = field(default_factory=dict)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    # (type, "version" | "agent", name) -> attempts and failures per minute
    cohorts: dict[tuple[str, str, str], Cohort] = field(default_factory=dict)
    # Values the detectors derived, by (type, what, minute): read once the Recent is filled,
    # shared by the windows of one history.
    cache: dict[tuple[str, str, datetime], float | None] = field(default_factory=dict)

    def index(self, minute: datetime) -> int | None:
        i = int((minute - self.first) / MINUTE)
        return i if 0 <= i < self.minutes else None

    def _stats(self, type_: str, i: int) -> MinuteStats:
        stats = self.types.get(type_)
        if stats is None:
            stats = self.types[type_] = [MinuteStats() for _ in range(self.minutes)]
        return stats[i]

    def _cohort(self, key: tuple[str, str, str]) -> Cohort:
        cohort = self.cohorts.get(key)
        if cohort is None:
            cohort = self.cohorts[key] = Cohort([0] * self.minutes, [0] * self.minutes)
        return cohort

    def add_outcome(
        self,
        minute: datetime,
        type_: str,
        version: str,
        outcome: str,
        count: int,
        durations: Sequence[int],
    ) -> None:
        i = self.index(minute)
        if i is None or outcome not in ATTEMPT_OUTCOMES:
            return
        stats = self._stats(type_, i)
        stats.attempts += count
        failed = count if outcome in FAILED_OUTCOMES else 0
        stats.failures += failed
        if outcome in TIMED_OUTCOMES:
            add_histograms(stats.durations, durations)
            stats.timed += sum(durations)
        cohort = self._cohort((type_, "version", version))
        cohort.attempts[i] += count
        cohort.failures[i] += failed

    def add_agent(self, minute: datetime, type_: str, agent: str, outcome: str, n: int) -> None:
        i = self.index(minute)
        if i is None or outcome not in ATTEMPT_OUTCOMES:
            return
        cohort = self._cohort((type_, "agent", agent))
        cohort.attempts[i] += n
        cohort.failures[i] += n if outcome in FAILED_OUTCOMES else 0

    def add_lag(
        self, minute: datetime, type_: str, count: int, lags: Sequence[int], due: int
    ) -> None:
        i = self.index(minute)
        if i is None:
            return
        stats = self._stats(type_, i)
        stats.starts += count
        add_histograms(stats.lags, lags)
        stats.due += due

    def add_error(
        self, minute: datetime, type_: str, fingerprint: str, count: int, example: str
    ) -> None:
        i = self.index(minute)
        if i is None:
            return
        key = (type_, fingerprint)
        self.errors.setdefault(key, [0] * self.minutes)[i] += count
        self.examples.setdefault(key, example)

    def window(self, first: int, minutes: int) -> "Recent":
        """The minutes `first` … `first + minutes - 1` of this one (same objects: read only)."""
        end = first + minutes
        return Recent(
            self.first + first * MINUTE,
            minutes,
            {t: stats[first:end] for t, stats in self.types.items()},
            {k: counts[first:end] for k, counts in self.errors.items()},
            self.first_seen,
            self.examples,
            {
                k: Cohort(c.attempts[first:end], c.failures[first:end])
                for k, c in self.cohorts.items()
            },
            self.cache,
        )


def minute_span(recent: Recent, first: int, last: int) -> tuple[datetime, datetime]:
    return recent.first + first * MINUTE, recent.first + (last + 1) * MINUTE


def poisson_sf(k: int, mean: float) -> float:
    """P(X ≥ k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    # Summed from k upwards in log space: the terms fall fast once past the mean.
    log_term = k * math.log(mean) - mean - math.lgamma(k + 1)
    total, n = 0.0, k
    while True:
        term = math.exp(log_term)
        total += term
        n += 1
        log_term += math.log(mean) - math.log(n)
        if term < 1e-300 or (n > mean and term < total * 1e-12):
            return min(1.0, total)


def failure_rate(recent: Recent, type_: str, tuning: Tuning) -> Finding | None:
    """The last `rate_window` minutes' failures against the rate of the minutes before them,
    by an exact count test (Poisson tail of the failures given the attempts).

    Not a band over per-minute rates: a minute's failures are a binomial count, so where most
    minutes have none the MAD is 0 and every failure looks extreme, and where minutes hold a
    few dozen attempts a band is blind to a rate that triples. The baseline is robust all the
    same: minutes whose failures are themselves unlikely under the pooled rate (an earlier
    burst) are left out of it."""
    stats = recent.types[type_]
    cut = len(stats) - tuning.rate_window
    window = stats[cut:]
    failures = sum(s.failures for s in window)
    attempts = sum(s.attempts for s in window)
    earlier = [s for s in stats[:cut] if s.attempts]
    if failures < tuning.min_failures or len(earlier) <= tuning.min_history:
        return None
    pooled = max(
        sum(s.failures for s in earlier) / sum(s.attempts for s in earlier),
        tuning.min_baseline_rate,
    )
    usual = [s for s in earlier if poisson_sf(s.failures, s.attempts * pooled) > tuning.outlier_p]
    base_attempts = sum(s.attempts for s in usual)
    if base_attempts < tuning.min_baseline_attempts:
        return None
    base = sum(s.failures for s in usual) / base_attempts
    rate = failures / attempts
    p = poisson_sf(failures, attempts * max(base, tuning.min_baseline_rate))
    if rate - base < tuning.min_rate_rise or rate < tuning.rate_ratio * base or p > tuning.max_p:
        return None
    start, end = minute_span(recent, cut, len(stats) - 1)
    return Finding(
        "anomaly.failure_rate",
        type_,
        "critical" if rate >= 0.5 else "warning",
        start,
        end,
        {
            "value": rate,
            "expected": base,
            "failures": failures,
            "attempts": attempts,
            "p": p,
            "minutes_left_out_of_baseline": len(earlier) - len(usual),
        },
    )


def _rising(
    recent: Recent,
    type_: str,
    tuning: Tuning,
    kind: str,
    series: list[tuple[int, float]],
    ratio: float,
    floor: float,
) -> Finding | None:
    """A finding when the last `shift_points` points of `series` (minute index, seconds) all stand
    above the level before them, the last of them among the last minutes (a type that went
    quiet has no current finding): each at least `ratio` times that level, `floor` seconds,
    and `shift_threshold` robust sigmas above it. The level is the median of the earlier points,
    which a rise does not move (an EWMA follows a lasting one within a few points, and stops
    seeing it); a rise that lasts half the lookback becomes the level. Both are taken in log
    space: durations vary by factors, and a factor is what matters."""
    shift = tuning.shift_points
    if len(series) < tuning.min_history + shift or series[-1][0] < recent.minutes - 1 - shift:
        return None
    logs = [math.log2(v) for _, v in series]
    before = logs[:-shift]
    level = median(before)
    scale = noise_scale([x - level for x in before], level)
    points = []
    for (minute, value), logged in zip(series[-shift:], logs[-shift:], strict=True):
        score = (logged - level) / scale
        if score < tuning.shift_threshold or value < ratio * 2**level or value < floor:
            return None
        points.append((minute, value, score))
    expected = 2**level
    minute, value, score = points[-1]
    rise = value / expected
    start, end = minute_span(recent, points[0][0], minute)
    return Finding(
        kind,
        type_,
        "critical" if rise >= 3 * ratio else "warning",
        start,
        end,
        {
            "value": value,
            "expected": expected,
            "ratio": rise,
            "score": round(score, 2),
            "points": [
                {"minute": (recent.first + m * MINUTE).isoformat(), "value": v}
                for m, v, _ in points
            ],
        },
    )


def _pooled_p95s(
    recent: Recent, type_: str, histogram: str, counted: str, least: int, tuning: Tuning
) -> list[tuple[int, float]]:
    """(minute index, p95) of each run of `smooth_minutes` minutes ending at a minute, from
    their summed histograms, where they hold at least `least` values: a minute's p95 of a few
    dozen tasks moves by a factor from one minute to the next; three minutes' much less."""
    stats = recent.types[type_]
    width = tuning.smooth_minutes
    series = []
    for i in range(width - 1, len(stats)):
        key = (type_, histogram, recent.first + i * MINUTE)
        if key not in recent.cache:
            run = stats[i - width + 1 : i + 1]
            if sum(getattr(s, counted) for s in run) < least:
                recent.cache[key] = None
            else:
                pooled = [0] * BUCKETS
                for s in run:
                    add_histograms(pooled, getattr(s, histogram))
                recent.cache[key] = percentile(pooled, 0.95)
        value = recent.cache[key]
        if value is not None:
            series.append((i, value))
    return series


def duration_p95(recent: Recent, type_: str, tuning: Tuning) -> Finding | None:
    series = _pooled_p95s(recent, type_, "durations", "timed", tuning.min_durations, tuning)
    return _rising(
        recent, type_, tuning, "anomaly.duration_p95", series, tuning.duration_ratio, 0.0
    )


def queue_lag(recent: Recent, type_: str, tuning: Tuning) -> Finding | None:
    series = _pooled_p95s(recent, type_, "lags", "starts", tuning.min_starts, tuning)
    return _rising(
        recent, type_, tuning, "anomaly.queue_lag", series, tuning.lag_ratio, tuning.min_lag_s
    )


def queue_stall(recent: Recent, type_: str, tuning: Tuning) -> Finding | None:
    """A queue whose due attempts stopped starting: its lag grows while nothing starts, so no
    start measures it. At least `min_stalled_due` attempts became due in the last
    `stall_minutes` minutes and at most `stall_share` of that many started, on a type whose
    due attempts started before (so a type always held back by its limits is not stalled)."""
    stats = recent.types[type_]
    cut = len(stats) - tuning.stall_minutes
    due = sum(s.due for s in stats[cut:])
    started = sum(s.starts for s in stats[cut:])
    if due < tuning.min_stalled_due or started > tuning.stall_share * due:
        return None
    before_due = sum(s.due for s in stats[:cut])
    before_started = sum(s.starts for s in stats[:cut])
    if before_started < tuning.min_starts_before or before_started < before_due / 2:
        return None
    start, end = minute_span(recent, cut, len(stats) - 1)
    return Finding(
        "anomaly.queue_lag",
        type_,
        "critical",
        start,
        end,
        {"stalled": True, "due": due, "started": started, "minutes": tuning.stall_minutes},
    )


def anomaly_findings(recent: Recent, tuning: Tuning) -> list[Finding]:
    found = []
    for type_ in sorted(recent.types):
        lag = queue_lag(recent, type_, tuning) or queue_stall(recent, type_, tuning)
        for finding in (
            failure_rate(recent, type_, tuning),
            duration_p95(recent, type_, tuning),
            lag,
        ):
            if finding is not None:
                found.append(finding)
    return found
