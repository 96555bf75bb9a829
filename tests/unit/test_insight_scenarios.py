"""The detectors on the shipped generated histories (deterministic seeds): precision and
recall of at least 0.9 over the scenarios with injected incidents, one alert per incident
detected, and not one insight in the quiet ones. `make bench` prints the figures per scenario
(bench/insights.py)."""

import dataclasses

from services.analysis.scenarios import SCENARIOS, Incident, run, score

TARGET = 0.9


def test_the_detectors_meet_their_targets_on_the_shipped_scenarios() -> None:
    results = [score(scenario, run(scenario)) for scenario in SCENARIOS]
    quiet = [r for r in results if not r.incidents]
    assert quiet and all(r.insights == 0 for r in quiet), [r.false_insights for r in quiet]
    busy = [r for r in results if r.incidents]
    recall = sum(r.detected for r in busy) / sum(r.incidents for r in busy)
    precision = sum(r.true_insights for r in busy) / sum(r.insights for r in busy)
    assert recall >= TARGET, [(r.scenario, r.detected, r.incidents) for r in busy]
    assert precision >= TARGET, [f for r in busy for f in r.false_insights]
    # One incident, one alert: the other insights of an incident join it silently.
    assert [r.alerts for r in busy] == [r.detected for r in busy]


def test_lasting_latency_rises_are_found_and_slow_minutes_are_not() -> None:
    """Regressions of 1.8-2x lasting 20 minutes are all found, on every profile (a baseline
    that followed the rise, an EWMA, found 3 of 5); a single minute 5x slower, on each type
    twice, is no incident."""
    moderate = next(s for s in SCENARIOS if s.name == "moderate_latency_regression")
    assert score(moderate, run(moderate)).detected == len(moderate.incidents) == 5
    blips = dataclasses.replace(
        moderate,
        name="slow minutes",
        incidents=tuple(
            Incident("latency_regression", profile.name, 100 + 60 * n, 1, size=5.0)
            for n, profile in enumerate([*moderate.profiles, *moderate.profiles])
        ),
    )
    assert run(blips) == []
