"""Canary verdicts: the error-rate and duration tests on known inputs, and the verdicts."""

import math

import pytest

from services.analysis.canary import (
    Cohort,
    Verdict,
    error_rate_test,
    fisher_greater,
    judge,
    mann_whitney_greater,
)
from services.analysis.reports import BUCKETS, bucket_of


def _histogram(durations: dict[float, int]) -> list[int]:
    histogram = [0] * BUCKETS
    for seconds, count in durations.items():
        histogram[bucket_of(seconds)] += count
    return histogram


def _cohort(version: str, total: int, failed: int, durations: dict[float, int]) -> Cohort:
    return Cohort(version, total - failed, failed, _histogram(durations))


def test_fisher_on_the_lady_tasting_tea() -> None:
    # 3 of 4 against 1 of 4: P(3 or more) = (C(4,3)·C(4,1) + C(4,4)·C(4,0)) / C(8,4).
    assert fisher_greater(1, 4, 3, 4) == pytest.approx(17 / 70)
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(69 / 70)


def test_two_proportion_z_test() -> None:
    stats = error_rate_test(_cohort("1.0", 100, 10, {}), _cohort("1.1", 100, 20, {}))
    se = math.sqrt(0.15 * 0.85 * (2 / 100))
    assert stats["test"] == "z"
    assert stats["z"] == pytest.approx(0.1 / se)
    assert stats["p_value"] == pytest.approx(0.02385, abs=1e-4)
    assert stats["difference"] == pytest.approx(0.1)


def test_mann_whitney_from_histograms() -> None:
    baseline = _histogram({0.1: 1, 0.2: 1})
    canary = _histogram({0.4: 1, 0.8: 1})
    stats = mann_whitney_greater(baseline, canary)
    # Every canary duration is longer: U = 2·2, mean 2, variance 2·2·5/12.
    assert stats["u"] == 4
    assert stats["z"] == pytest.approx(1.5 / math.sqrt(5 / 3))
    assert stats["p_value"] == pytest.approx(0.1226, abs=1e-4)
    # All tied: no evidence either way.
    same = _histogram({0.1: 5})
    assert mann_whitney_greater(same, same)["p_value"] == 1.0


def test_identical_cohorts_pass_with_high_p_values() -> None:
    durations = {0.1: 200, 0.5: 250, 2.0: 50}
    verdict, stats = judge(_cohort("1.0", 500, 5, durations), _cohort("1.1", 500, 5, durations))
    assert verdict == Verdict.PASS
    assert stats["error_rate"]["p_value"] > 0.4
    assert stats["duration"]["p_value"] > 0.4
    assert stats["duration"]["median_ratio"] == pytest.approx(1.0)
    assert stats["cohorts"]["canary"]["error_rate"] == pytest.approx(0.01)


def test_a_canary_with_ten_times_the_errors_fails() -> None:
    durations = {0.2: 1000}
    verdict, stats = judge(
        _cohort("1.0", 1000, 10, durations), _cohort("1.1", 1000, 100, durations)
    )
    assert verdict == Verdict.FAIL
    assert stats["error_rate"]["significant"]
    assert stats["error_rate"]["p_value"] < 1e-6
    assert not stats["duration"]["significant"]


def test_a_canary_twice_as_slow_fails() -> None:
    verdict, stats = judge(
        _cohort("1.0", 200, 2, {0.2: 150, 0.3: 50}), _cohort("1.1", 200, 2, {0.4: 150, 0.6: 50})
    )
    assert verdict == Verdict.FAIL
    assert stats["duration"]["significant"]
    assert stats["duration"]["median_ratio"] == pytest.approx(2.0, rel=0.2)
    assert not stats["error_rate"]["significant"]


def test_a_small_but_significant_rise_under_a_point_passes() -> None:
    verdict, stats = judge(
        _cohort("1.0", 1_000_000, 1000, {0.2: 100}),
        _cohort("1.1", 1_000_000, 1500, {0.2: 100}),
    )
    assert stats["error_rate"]["p_value"] < 0.01
    assert verdict == Verdict.PASS


def test_ten_samples_are_inconclusive() -> None:
    verdict, stats = judge(_cohort("1.0", 10, 0, {0.2: 10}), _cohort("1.1", 10, 1, {0.2: 10}))
    assert verdict == Verdict.INCONCLUSIVE
    assert stats["error_rate"]["test"] == "fisher"
    assert stats["reasons"]
