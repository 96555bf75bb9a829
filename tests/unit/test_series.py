"""Numeric series: summary statistics and the anomalies a user would expect to see flagged."""

import math
import random
import re

import pytest

from services.analysis.series import Anomaly, anomalies, describe


def _noise(n: int, seed: int, level: float = 10.0, sigma: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0, sigma) for _ in range(n)]


def test_describe_gives_the_usual_statistics() -> None:
    summary = describe([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])

    assert summary["count"] == 10
    assert summary["sum"] == 55
    assert summary["mean"] == 5.5
    assert summary["std"] == pytest.approx(3.0277, abs=1e-4)
    assert (summary["min"], summary["max"]) == (1, 10)
    assert summary["percentiles"]["p50"] == 5.5
    assert summary["percentiles"]["p25"] == pytest.approx(3.25)
    assert summary["percentiles"]["p99"] == pytest.approx(9.91)


def test_describe_of_one_value_has_no_spread() -> None:
    summary = describe([4.5])

    assert summary["std"] == 0.0
    assert set(summary["percentiles"].values()) == {4.5}


def test_a_spike_in_noise_is_found_at_its_index_and_alone() -> None:
    series = _noise(300, seed=1)
    series[180] += 10

    found = anomalies(series)

    assert [a.index for a in found] == [180]
    assert found[0].value == series[180]
    assert found[0].expected == pytest.approx(10, abs=1.5)
    assert found[0].score >= 3.5


def test_a_spike_does_not_drag_the_baseline() -> None:
    series = _noise(200, seed=2)
    series[100] += 1000

    found = anomalies(series)

    # The points after the spike are judged against the old level, so none of them is flagged
    # (an unclipped EWMA would expect ~300 next and flag the return to normal).
    assert [a.index for a in found] == [100]


def test_a_level_shift_is_flagged_at_the_shift_and_then_followed() -> None:
    series = _noise(120, seed=3) + _noise(200, seed=4, level=25.0)

    found = anomalies(series)

    assert found[0].index == 120
    # The baseline catches up with the new level: the tail of the series is quiet again.
    assert all(a.index < 160 for a in found)


def test_quiet_noisy_series_give_no_anomalies() -> None:
    flagged = [anomalies(_noise(500, seed=seed)) for seed in range(10)]

    # 3.5 robust sigma is about one point in 2,150 for Gaussian noise: 5,000 points, a handful at
    # most, not one per series as a scale taken naively from a short history would give.
    assert sum(len(f) for f in flagged) <= 5
    assert anomalies(_noise(200, seed=11)) == []


def test_a_flat_series_has_no_anomalies_until_it_moves() -> None:
    assert anomalies([5.0] * 40) == []

    found = anomalies([5.0] * 40 + [6.0])

    assert found == [Anomaly(index=40, value=6.0, expected=5.0, score=found[0].score)]
    assert math.isfinite(found[0].score)


def test_nothing_is_flagged_before_min_history() -> None:
    series = [1.0] * 5 + [100.0] + [1.0] * 20

    assert anomalies(series, min_history=8) == []
    assert [a.index for a in anomalies(series, min_history=5)] == [5]


def test_a_lower_threshold_flags_more() -> None:
    series = _noise(400, seed=5)

    assert len(anomalies(series, threshold=2.0)) > len(anomalies(series, threshold=3.5))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "values is empty"),
        ([1, 2, "x"], "values[2] is not a number: 'x'"),
        ([1, None], "values[1] is not a number: None"),
        ([1, True], "values[1] is not a number: True"),
        ([1, math.nan], "values[1] is not a finite number: nan"),
        ([1, math.inf], "values[1] is not a finite number: inf"),
        ("123", "values must be a list of numbers, got str"),
        ({"a": 1}, "values must be a list of numbers, got dict"),
    ],
)
def test_bad_values_are_refused_naming_what_is_wrong(values: object, message: str) -> None:
    with pytest.raises(ValueError) as describe_error:
        describe(values)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as anomalies_error:
        anomalies(values)  # type: ignore[arg-type]

    assert str(describe_error.value) == message
    assert str(anomalies_error.value) == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 0}, "threshold must be a positive number, got 0"),
        ({"threshold": math.nan}, "threshold must be a positive number, got nan"),
        ({"alpha": 0}, "alpha must be in (0, 1], got 0"),
        ({"alpha": 1.5}, "alpha must be in (0, 1], got 1.5"),
        ({"min_history": 1}, "min_history must be an integer of at least 2, got 1"),
        ({"min_history": 2.5}, "min_history must be an integer of at least 2, got 2.5"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        anomalies([1.0, 2.0, 3.0], **options)  # type: ignore[arg-type]
