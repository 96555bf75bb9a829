"""Historical context: task events folded into per-minute rollups per task type, queue,
agent version and outcome (counts and a duration histogram), queue lag (a histogram of the
time from due to started), outcomes per agent, and error fingerprints.

The version is the task agent's (`AGENTRY_VERSION`), which every task event carries."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agentry.events.v1 import events_pb2
from libs.common.events import event_data, event_time
from services.analysis.fingerprints import fingerprint
from services.analysis.reports import BUCKETS, bucket_of

# The outcome each task event counts as; other task events are not rolled up.
OUTCOMES = {
    "task.succeeded": "succeeded",
    "task.failed": "failed",
    "task.retrying": "retried",
    "task.dead_lettered": "dead_lettered",
}
# Events whose error is fingerprinted: every failed attempt once (a dead letter repeats
# the error of the failure that caused it).
_FAILED_ATTEMPTS = {"task.failed", "task.retrying"}
# Outcomes counted per agent too: failures concentrated on one agent are a pattern.
_AGENT_OUTCOMES = {"succeeded", "failed", "retried"}
# Events that put an attempt in a queue, due at its `run_at`: counted at that minute, they
# show a queue whose due tasks stop starting (eagerly run tasks start without queueing).
_QUEUEING = {"task.queued", "task.retrying"}
EXAMPLE_LENGTH = 1000


@dataclass(frozen=True)
class Key:
    minute: datetime
    type: str
    queue: str
    version: str


@dataclass
class Rollup:
    count: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)


@dataclass
class ErrorSeen:
    count: int
    first_seen: datetime
    last_seen: datetime
    example: str


@dataclass
class Fold:
    """What one batch of events adds to the history."""

    events: Counter[tuple[datetime, str]] = field(default_factory=Counter)
    rollups: dict[tuple[Key, str], Rollup] = field(default_factory=dict)
    errors: dict[tuple[Key, str], ErrorSeen] = field(default_factory=dict)
    # Starts per key, with the histogram of their queue lag.
    lags: dict[Key, Rollup] = field(default_factory=dict)
    # Attempts that became due, per key of the minute they became due.
    due: Counter[Key] = field(default_factory=Counter)
    # (minute, type, agent, outcome) -> count
    agents: Counter[tuple[datetime, str, str, str]] = field(default_factory=Counter)


def minute_of(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds - seconds % 60, tz=UTC)


def duration_s(data: dict[str, Any]) -> float | None:
    started, finished = data.get("started_at"), data.get("finished_at")
    if started is None or finished is None:
        return None
    return max(0.0, float(finished) - float(started))


def lag_s(data: dict[str, Any], started: float) -> float | None:
    """From the attempt's due time to `started` (the start event's time: `started_at` is the
    first attempt's); None for events from before task events carried `run_at`."""
    due = data.get("run_at")
    if due is None:
        return None
    return max(0.0, started - float(due))


def _key(event: events_pb2.Event, data: dict[str, Any]) -> Key:
    return Key(
        minute_of(event_time(event)),
        str(data.get("type") or ""),
        str(data.get("queue") or ""),
        str(data.get("version") or ""),
    )


def _started(out: Fold, event: events_pb2.Event) -> None:
    data = event_data(event)
    if not isinstance(data, dict):
        return
    lag = lag_s(data, event_time(event))
    if lag is None:
        return
    rollup = out.lags.setdefault(_key(event, data), Rollup())
    rollup.count += 1
    rollup.buckets[bucket_of(lag)] += 1


def fold(events: Iterable[events_pb2.Event]) -> Fold:
    out = Fold()
    for event in events:
        out.events[(minute_of(event_time(event)), event.type)] += 1
        if event.type == "task.started":
            _started(out, event)
            continue
        outcome = OUTCOMES.get(event.type)
        if outcome is None and event.type not in _QUEUEING:
            continue
        data = event_data(event)
        if not isinstance(data, dict):
            data = {}
        key = _key(event, data)
        if event.type in _QUEUEING and data.get("run_at") is not None:
            out.due[replace(key, minute=minute_of(float(data["run_at"])))] += 1
        if outcome is None:
            continue
        if outcome in _AGENT_OUTCOMES:
            out.agents[(key.minute, key.type, str(data.get("agent") or ""), outcome)] += 1
        rollup = out.rollups.setdefault((key, outcome), Rollup())
        rollup.count += 1
        duration = duration_s(data) if outcome in ("succeeded", "failed") else None
        if duration is not None:
            rollup.buckets[bucket_of(duration)] += 1
        error = data.get("error")
        if event.type in _FAILED_ATTEMPTS and error:
            _seen(out.errors, (key, fingerprint(str(error))), str(error), event)
    return out


def _seen(
    errors: dict[tuple[Key, str], ErrorSeen],
    at: tuple[Key, str],
    message: str,
    event: events_pb2.Event,
) -> None:
    when = datetime.fromtimestamp(event_time(event), tz=UTC)
    seen = errors.get(at)
    if seen is None:
        errors[at] = ErrorSeen(1, when, when, message[:EXAMPLE_LENGTH])
        return
    seen.count += 1
    seen.first_seen = min(seen.first_seen, when)
    seen.last_seen = max(seen.last_seen, when)
