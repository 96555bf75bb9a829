"""Analyses on demand: AnalysisService.RunAnalysis, which the task types of the same names
(services/task_agent/analysis_builtins.py) call from workflow steps and plain tasks.

- `analysis.describe`  {"values": [number, …]}
  → {"count", "sum", "mean", "std", "min", "max", "percentiles": {"p1", "p5", "p25", "p50",
  "p75", "p90", "p95", "p99"}}
- `analysis.anomalies` {"values": [number, …], "threshold"?: 3.5, "alpha"?: 0.3,
  "min_history"?: 8} → {"count", "found", "anomalies": [{"index", "value", "expected",
  "score"}, …] (the first MAX_ANOMALIES)}
- `analysis.patterns`  {"lines": [string, …], "top"?: 20}
  → {"lines", "distinct", "clusters": [{"fingerprint", "count", "share", "example",
  "first_index"}, …]}, largest first

The work is pure Python and CPU-bound, so it runs in a pool of spawned processes: off the
event loop, and on more than one core (threads would hold the GIL). The pool takes the raw
JSON, so decoding it is off the loop too; the size check and the kind are answered before."""

import asyncio
import json
import multiprocessing
from collections.abc import Callable, Set
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from libs.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.analysis import line_clusters, series

MAX_INPUT_BYTES = 1024 * 1024
# 1 MiB holds ~50,000 numbers at full float precision, ~500,000 one-digit ones: a bound
# of its own keeps the work of one call (and its output) to a second or two.
MAX_ITEMS = 200_000
# The anomalies listed, first ones first ("found" counts them all): a pathological series
# could otherwise answer more than a gRPC message holds.
MAX_ANOMALIES = 1000


def _describe(document: dict[str, Any]) -> dict[str, Any]:
    _fields(document, required={"values"})
    return series.describe(_items(document, "values"))


def _anomalies(document: dict[str, Any]) -> dict[str, Any]:
    _fields(document, required={"values"}, optional={"threshold", "alpha", "min_history"})
    values = series.numbers(_items(document, "values"))
    found = series.anomalies(
        values,
        threshold=_number(document, "threshold", series.DEFAULT_THRESHOLD),
        alpha=_number(document, "alpha", series.DEFAULT_ALPHA),
        min_history=_integer(document, "min_history", series.DEFAULT_MIN_HISTORY),
    )
    return {
        "count": len(values),
        "found": len(found),
        "anomalies": [
            {"index": a.index, "value": a.value, "expected": a.expected, "score": a.score}
            for a in found[:MAX_ANOMALIES]
        ],
    }


def _patterns(document: dict[str, Any]) -> dict[str, Any]:
    _fields(document, required={"lines"}, optional={"top"})
    top = _integer(document, "top", line_clusters.DEFAULT_TOP)
    return line_clusters.clusters(_items(document, "lines"), top=top)


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "analysis.describe": _describe,
    "analysis.anomalies": _anomalies,
    "analysis.patterns": _patterns,
}


def check(kind: str, raw: bytes) -> None:
    """What can be refused without reading the input: an unknown kind, an oversize input."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown analysis kind {kind!r}: one of {', '.join(sorted(KINDS))}")
    if len(raw) > MAX_INPUT_BYTES:
        raise InvalidArgument(
            f"{kind}: input is {len(raw)} bytes, over the limit of {MAX_INPUT_BYTES}"
        )


def run(kind: str, raw: bytes) -> bytes:
    """The JSON output of analysis `kind` over the JSON input `raw`; InvalidArgument naming
    what is wrong with it. Module-level and plain, for the process pool."""
    check(kind, raw)

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        document = json.loads(raw, parse_constant=refuse) if raw else None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidArgument(f"{kind}: input is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"{kind}: input must be a JSON object")
    try:
        output = KINDS[kind](document)
    except ValueError as exc:
        raise InvalidArgument(f"{kind}: {exc}") from None
    return json.dumps(output, separators=(",", ":")).encode()


def _fields(document: dict[str, Any], required: Set[str], optional: Set[str] = frozenset()) -> None:
    """Refuses a missing field and an unknown one (a misspelt option would go unnoticed)."""
    missing = sorted(required - document.keys())
    if missing:
        raise ValueError(f"{missing[0]} is required")
    unknown = sorted(document.keys() - required - optional)
    if unknown:
        known = ", ".join(sorted(required | optional))
        raise ValueError(f"{unknown[0]!r} is not an input of this analysis (it takes {known})")


def _items(document: dict[str, Any], key: str) -> Any:
    value = document[key]
    if isinstance(value, list) and len(value) > MAX_ITEMS:
        raise ValueError(f"{key} has {len(value)} items, over the limit of {MAX_ITEMS}")
    return value


def _number(document: dict[str, Any], key: str, default: float) -> float:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _integer(document: dict[str, Any], key: str, default: int) -> int:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


class Analyses:
    """Runs analyses in a pool of `workers` spawned processes (not forked: a fork of a process
    running gRPC threads is not safe), refusing with RESOURCE_EXHAUSTED past `max_pending`
    waiting or running, so a burst cannot pile inputs up in memory."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self._workers = workers
        self._pending = 0
        self._max_pending = max_pending
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def run(self, kind: str, raw: bytes) -> bytes:
        check(kind, raw)
        if self._pending >= self._max_pending:
            raise ResourceExhausted(f"{self._pending} analyses in hand: try again shortly")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor(), run, kind, raw)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the next call gets a fresh pool.
            self.close()
            raise Unavailable("an analysis worker stopped: try again") from None
        finally:
            self._pending -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
