"""Failure patterns in the recent rollups, per task type:

- a new fingerprint: an error never seen before in the history kept, seen `min_new_count`
  times in the last minutes of a type that has history (at first start everything is new);
- a fingerprint whose rate jumps: its count in the last minutes against its own earlier rate,
  as a Poisson tail, and by a ratio;
- failures concentrated on one agent version or one agent: that cohort holds most of the
  failures and fails significantly more often than the others (two-proportion z)."""

import math
from typing import Any

from services.analysis.detectors import (
    MINUTE,
    Finding,
    Recent,
    Tuning,
    minute_span,
    poisson_sf,
)


def _has_history(recent: Recent, type_: str, before: int, tuning: Tuning) -> bool:
    stats = recent.types.get(type_, [])
    return sum(1 for s in stats[:before] if s.attempts) >= tuning.min_history


def new_fingerprints(recent: Recent, tuning: Tuning) -> list[Finding]:
    window_first = recent.minutes - tuning.new_window
    since = recent.first + window_first * MINUTE
    fresh: dict[str, list[dict[str, Any]]] = {}
    for (type_, fp), counts in recent.errors.items():
        count = sum(counts[window_first:])
        seen = recent.first_seen.get((type_, fp))
        if count < tuning.min_new_count or seen is None or seen < since:
            continue
        if not _has_history(recent, type_, window_first, tuning):
            continue
        example = recent.examples.get((type_, fp), "")
        fresh.setdefault(type_, []).append(
            {"fingerprint": fp, "count": count, "first_seen": seen.isoformat(), "example": example}
        )
    start, end = minute_span(recent, window_first, recent.minutes - 1)
    return [
        Finding(
            "pattern.new_fingerprint",
            type_,
            "info",
            start,
            end,
            {"fingerprints": sorted(items, key=lambda e: (-e["count"], e["fingerprint"]))},
        )
        for type_, items in sorted(fresh.items())
    ]


def fingerprint_jumps(recent: Recent, tuning: Tuning) -> list[Finding]:
    window_first = recent.minutes - tuning.jump_window
    since = recent.first + window_first * MINUTE
    jumps: dict[str, list[dict[str, Any]]] = {}
    for (type_, fp), counts in recent.errors.items():
        count = sum(counts[window_first:])
        seen = recent.first_seen.get((type_, fp))
        if count < tuning.jump_min_count or seen is None or seen >= since:
            continue
        # One occurrence added before: a rare error's earlier rate is not zero.
        before = (sum(counts[:window_first]) + 1) / window_first
        expected = before * tuning.jump_window
        p = poisson_sf(count, expected)
        if count < tuning.jump_ratio * expected or p > tuning.jump_p:
            continue
        jumps.setdefault(type_, []).append(
            {"fingerprint": fp, "count": count, "expected": expected, "p": p}
        )
    start, end = minute_span(recent, window_first, recent.minutes - 1)
    return [
        Finding(
            "pattern.fingerprint_jump",
            type_,
            "warning",
            start,
            end,
            {"fingerprints": sorted(items, key=lambda e: (-e["count"], e["fingerprint"]))},
        )
        for type_, items in sorted(jumps.items())
    ]


def _concentrated(cohorts: dict[str, tuple[int, int]], tuning: Tuning) -> dict[str, Any] | None:
    total_failures = sum(f for _, f in cohorts.values())
    if total_failures < tuning.concentration_min_failures or len(cohorts) < 2:
        return None
    name, (attempts, failures) = max(cohorts.items(), key=lambda c: (c[1][1], c[0]))
    rest_attempts = sum(a for n, (a, _) in cohorts.items() if n != name)
    rest_failures = total_failures - failures
    if rest_attempts == 0 or failures / total_failures < tuning.concentration_share:
        return None
    rate, rest_rate = failures / attempts, rest_failures / rest_attempts
    pooled = total_failures / (attempts + rest_attempts)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / attempts + 1 / rest_attempts))
    z = (rate - rest_rate) / spread if spread > 0 else 0.0
    if z < tuning.concentration_z or rate < tuning.concentration_ratio * max(rest_rate, 1e-9):
        return None
    return {
        "cohort": name,
        "failures": failures,
        "attempts": attempts,
        "share_of_failures": failures / total_failures,
        "failure_rate": rate,
        "others_failure_rate": rest_rate,
        "z": z,
    }


def concentrated_failures(recent: Recent, tuning: Tuning) -> list[Finding]:
    window_first = recent.minutes - tuning.concentration_window
    per_type: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for (type_, dimension, name), cohort in recent.cohorts.items():
        attempts = sum(cohort.attempts[window_first:])
        if attempts:
            per_type.setdefault((type_, dimension), {})[name] = (
                attempts,
                sum(cohort.failures[window_first:]),
            )
    found: dict[str, dict[str, Any]] = {}
    for (type_, dimension), cohorts in sorted(per_type.items()):
        evidence = _concentrated(cohorts, tuning)
        if evidence is not None:
            found.setdefault(type_, {})[dimension] = evidence
    start, end = minute_span(recent, window_first, recent.minutes - 1)
    return [
        Finding("pattern.concentrated_failures", type_, "warning", start, end, evidence)
        for type_, evidence in sorted(found.items())
    ]


def pattern_findings(recent: Recent, tuning: Tuning) -> list[Finding]:
    return [
        *new_fingerprints(recent, tuning),
        *fingerprint_jumps(recent, tuning),
        *concentrated_failures(recent, tuning),
    ]
