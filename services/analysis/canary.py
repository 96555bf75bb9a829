"""Canary verdicts: does the canary version of the task agents do worse than the baseline?

Two one-sided tests over the finished tasks of each cohort in the window:

- error rate: a two-proportion z-test (pooled), or Fisher's exact test when an expected cell
  count is under 5;
- duration: Mann-Whitney U over the two duration histograms (ranks over buckets, every
  duration in a bucket tied at its middle; tie-corrected normal approximation with continuity
  correction).

FAIL when either shows the canary worse: p < ALPHA and an error rate at least
MIN_ERROR_INCREASE higher, or p < ALPHA and a median at least MIN_MEDIAN_RATIO times longer.
PASS when neither does and both tests had MIN_SAMPLES per cohort; INCONCLUSIVE otherwise."""

import enum
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any, Protocol

from libs.common.errors import InvalidArgument, NotFound
from libs.common.paging import Cursor, check_page_size, page_token, parse_page_token
from services.analysis.reports import GroupTotals, percentile, ratio

MIN_SAMPLES = 50
ALPHA = 0.01
MIN_ERROR_INCREASE = 0.01
MIN_MEDIAN_RATIO = 1.2
MAX_WINDOW_S = 7 * 24 * 3600
# Below this expected count in any cell the normal approximation is off; Fisher's is exact.
_MIN_EXPECTED = 5
ALL_TYPES = "*"

_NORMAL = NormalDist()


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class Cohort:
    version: str
    succeeded: int
    failed: int
    histogram: Sequence[int]

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


def _upper_tail(z: float) -> float:
    return 1.0 - _NORMAL.cdf(z)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(b_failed: int, b_total: int, c_failed: int, c_total: int) -> float:
    """One-sided Fisher's exact test: P(the canary has `c_failed` failures or more) given the
    margins, under no difference."""
    failed, total = b_failed + c_failed, b_total + c_total
    if total == 0:
        return 1.0
    denominator = _log_comb(total, c_total)
    tail = 0.0
    for k in range(c_failed, min(failed, c_total) + 1):
        tail += math.exp(
            _log_comb(failed, k) + _log_comb(total - failed, c_total - k) - denominator
        )
    return min(1.0, tail)


def error_rate_test(baseline: Cohort, canary: Cohort) -> dict[str, Any]:
    """Is the canary's error rate higher? Its statistics and one-sided p-value."""
    nb, nc = baseline.total, canary.total
    rb, rc = ratio(baseline.failed, nb), ratio(canary.failed, nc)
    out: dict[str, Any] = {"difference": rc - rb}
    pooled = ratio(baseline.failed + canary.failed, nb + nc)
    expected = [n * p for n in (nb, nc) for p in (pooled, 1 - pooled)]
    if nb == 0 or nc == 0:
        out.update(test="none", p_value=1.0)
    elif min(expected) < _MIN_EXPECTED:
        p = fisher_greater(baseline.failed, nb, canary.failed, nc)
        out.update(test="fisher", p_value=p)
    else:
        se = math.sqrt(pooled * (1 - pooled) * (1 / nb + 1 / nc))
        z = (rc - rb) / se
        out.update(test="z", z=z, p_value=_upper_tail(z))
    out["significant"] = out["p_value"] < ALPHA and out["difference"] >= MIN_ERROR_INCREASE
    return out


def mann_whitney_greater(baseline: Sequence[int], canary: Sequence[int]) -> dict[str, Any]:
    """Mann-Whitney U of the canary's durations over the baseline's, from histograms; the
    one-sided p-value that the canary's are stochastically longer."""
    nb, nc = sum(baseline), sum(canary)
    n = nb + nc
    rank_sum = 0.0
    ties = 0
    below = 0
    for b, c in zip(baseline, canary, strict=True):
        tied = b + c
        rank_sum += c * (below + (tied + 1) / 2)
        ties += tied**3 - tied
        below += tied
    u = rank_sum - nc * (nc + 1) / 2
    mean = nb * nc / 2
    variance = nb * nc / 12 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0))
    if variance <= 0:
        return {"u": u, "z": 0.0, "p_value": 1.0}
    z = (u - mean - 0.5) / math.sqrt(variance)
    return {"u": u, "z": z, "p_value": _upper_tail(z)}


def duration_test(baseline: Cohort, canary: Cohort) -> dict[str, Any]:
    out = mann_whitney_greater(baseline.histogram, canary.histogram)
    median_b = percentile(baseline.histogram, 0.5)
    median_c = percentile(canary.histogram, 0.5)
    median_ratio = median_c / median_b if median_b else 0.0
    out.update(
        test="mann-whitney",
        baseline_median_s=median_b,
        canary_median_s=median_c,
        median_ratio=median_ratio,
    )
    out["significant"] = out["p_value"] < ALPHA and median_ratio >= MIN_MEDIAN_RATIO
    return out


def _cohort(c: Cohort) -> dict[str, Any]:
    return {
        "version": c.version,
        "total": c.total,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "error_rate": ratio(c.failed, c.total),
        "timed": sum(c.histogram),
        "p50_s": percentile(c.histogram, 0.5),
        "p95_s": percentile(c.histogram, 0.95),
    }


def judge(baseline: Cohort, canary: Cohort) -> tuple[Verdict, dict[str, Any]]:
    """The verdict and the statistics behind it."""
    errors = error_rate_test(baseline, canary)
    durations = duration_test(baseline, canary)
    errors["enough_samples"] = min(baseline.total, canary.total) >= MIN_SAMPLES
    durations["enough_samples"] = min(sum(baseline.histogram), sum(canary.histogram)) >= MIN_SAMPLES
    reasons = []
    for name, test in (("error rate", errors), ("duration", durations)):
        if not test["enough_samples"]:
            reasons.append(f"{name}: fewer than {MIN_SAMPLES} samples in a cohort")
        elif test["significant"]:
            reasons.append(f"{name}: the canary's is significantly worse")
    if any(t["enough_samples"] and t["significant"] for t in (errors, durations)):
        verdict = Verdict.FAIL
    elif errors["enough_samples"] and durations["enough_samples"]:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    statistics = {
        "cohorts": {"baseline": _cohort(baseline), "canary": _cohort(canary)},
        "error_rate": errors,
        "duration": durations,
        "thresholds": {
            "min_samples": MIN_SAMPLES,
            "alpha": ALPHA,
            "min_error_increase": MIN_ERROR_INCREASE,
            "min_median_ratio": MIN_MEDIAN_RATIO,
        },
        "reasons": reasons,
    }
    return verdict, statistics


@dataclass(frozen=True)
class CanaryAnalysis:
    id: str
    subject: str
    baseline: str
    canary: str
    window_s: int
    verdict: Verdict
    statistics: dict[str, Any]
    created_at: datetime


def cohort_of(version: str, totals: GroupTotals | None) -> Cohort:
    """The version's finished tasks; InvalidArgument when it did nothing at all."""
    if totals is None or not any(totals.counts.values()):
        raise InvalidArgument(f"no task events from version {version!r} in the window")
    return Cohort(
        version,
        totals.counts.get("succeeded", 0),
        totals.counts.get("failed", 0),
        totals.histogram,
    )


def check_canary_request(baseline: str, canary: str, window_s: int) -> None:
    if window_s <= 0 or window_s > MAX_WINDOW_S:
        raise InvalidArgument(
            f"window_s must be between 1 and {MAX_WINDOW_S} seconds (7 days), not {window_s}"
        )
    if not baseline or not canary:
        raise InvalidArgument("baseline and canary versions are required")
    if baseline == canary:
        raise InvalidArgument(f"baseline and canary are the same version {baseline!r}")


class CanaryHistory(Protocol):
    async def version_totals(
        self, since: datetime, versions: Sequence[str], type_: str | None
    ) -> dict[str, GroupTotals]: ...

    async def add_canary_analysis(self, analysis: CanaryAnalysis) -> None: ...

    async def canary_analysis(self, analysis_id: uuid.UUID) -> CanaryAnalysis | None: ...

    async def canary_analyses(
        self, after: Cursor | None, limit: int, subject: str | None
    ) -> list[CanaryAnalysis]: ...


@dataclass(frozen=True)
class CanaryPage:
    analyses: list[CanaryAnalysis]
    next_page_token: str


class Canaries:
    def __init__(self, history: CanaryHistory) -> None:
        self._history = history

    async def analyze(
        self, subject: str, baseline: str, canary: str, window_s: int, now: datetime
    ) -> CanaryAnalysis:
        check_canary_request(baseline, canary, window_s)
        subject = subject or ALL_TYPES
        totals = await self._history.version_totals(
            now - timedelta(seconds=window_s),
            [baseline, canary],
            None if subject == ALL_TYPES else subject,
        )
        verdict, statistics = judge(
            cohort_of(baseline, totals.get(baseline)), cohort_of(canary, totals.get(canary))
        )
        analysis = CanaryAnalysis(
            str(uuid.uuid4()), subject, baseline, canary, window_s, verdict, statistics, now
        )
        await self._history.add_canary_analysis(analysis)
        return analysis

    async def get(self, analysis_id: str) -> CanaryAnalysis:
        try:
            key = uuid.UUID(analysis_id)
        except ValueError:
            raise NotFound(f"no canary analysis {analysis_id!r}") from None
        analysis = await self._history.canary_analysis(key)
        if analysis is None:
            raise NotFound(f"no canary analysis {analysis_id!r}")
        return analysis

    async def list(self, page_size: int, token: str, subject: str) -> CanaryPage:
        """Newest first; `subject` (empty: all) keeps the analyses of that subject, "*" those
        over every task type."""
        limit = check_page_size(page_size)
        after = parse_page_token(token)
        rows = await self._history.canary_analyses(after, limit + 1, subject or None)
        more = len(rows) > limit
        rows = rows[:limit]
        next_token = page_token((rows[-1].created_at, uuid.UUID(rows[-1].id))) if more else ""
        return CanaryPage(rows, next_token)
