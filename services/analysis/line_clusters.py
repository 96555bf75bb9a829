"""Text lines (log lines, error messages) grouped by fingerprint: the lines that differ only in
their particulars (ids, numbers, timestamps, paths…) form one cluster, counted.

Bad input raises ValueError with a message naming what is wrong."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.analysis.fingerprints import fingerprint

DEFAULT_TOP = 20
MAX_TOP = 1000


@dataclass
class Cluster:
    fingerprint: str
    count: int
    # The first line of the cluster, as it was, and where it was.
    example: str
    first_index: int


def lines_of(values: Iterable[Any], name: str = "lines") -> list[str]:
    """`values` as a list of strings; ValueError naming the first element that is not one."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of strings, got {type(values).__name__}")
    result: list[str] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{name}[{index}] is not a string: {value!r}")
        result.append(value)
    if not result:
        raise ValueError(f"{name} is empty")
    return result


def clusters(lines: Iterable[Any], *, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """{"lines": how many, "distinct": how many clusters, "clusters": the `top` largest, each
    {"fingerprint", "count", "share", "example", "first_index"}, largest first (ties: the one
    seen first)}."""
    text = lines_of(lines)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be an integer from 1 to {MAX_TOP}, got {top!r}")
    by_fingerprint: dict[str, Cluster] = {}
    for index, line in enumerate(text):
        key = fingerprint(line)
        cluster = by_fingerprint.get(key)
        if cluster is None:
            by_fingerprint[key] = Cluster(key, 1, line, index)
        else:
            cluster.count += 1
    # Insertion order is first-seen order, and sorted() is stable.
    largest = sorted(by_fingerprint.values(), key=lambda c: -c.count)[:top]
    return {
        "lines": len(text),
        "distinct": len(by_fingerprint),
        "clusters": [
            {
                "fingerprint": c.fingerprint,
                "count": c.count,
                "share": c.count / len(text),
                "example": c.example,
                "first_index": c.first_index,
            }
            for c in largest
        ],
    }
