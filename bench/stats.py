"""Percentiles, nearest-rank: p99 of 3,000 samples is the 2,970th smallest."""

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), 3),
        "p90": round(percentile(ordered, 90), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3) if ordered else math.nan,
    }
