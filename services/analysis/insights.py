"""Insights: what the detectors and pattern finders see, one insight per (kind, subject) for
as long as it lasts, and one alert per incident.

Every round (`AGENTRY_INSIGHT_INTERVAL_S`) the detectors read the recent rollups. A finding
with no open insight of its (kind, subject) opens one; while the condition lasts the open
insight is updated (its window grows, the evidence is the latest, the severity the highest
seen), silently. It is resolved once the condition has been clear for the cool-down
(`AGENTRY_INSIGHT_COOLDOWN_S`): a condition that comes back within it is the same insight.

An incident is what happens to one subject (a task type): the first insight opened on a subject
with none open is `insight.opened` (the alert), others opened while one is open are
`insight.joined` (a failure burst is often a new fingerprint too: one page is enough), and each
resolution is `insight.resolved`. Alerts are webhook subscriptions to `insight.opened`.

Events leave through an outbox (`announced`): published in the round's transaction, under an
advisory lock that one replica holds per round, with ids made of the insight and its state,
so one published again after a crash is still delivered to webhooks once."""

import asyncio
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentry.events.v1 import events_pb2
from libs.common.errors import InvalidArgument
from libs.common.events import make_event
from libs.common.paging import Cursor, check_page_size, page_token, parse_page_token
from services.analysis.detectors import (
    DEFAULT_TUNING,
    MINUTE,
    Finding,
    Recent,
    Tuning,
    anomaly_findings,
)
from services.analysis.failure_patterns import pattern_findings
from services.analysis.history import minute_of
from services.analysis.reports import MAX_WINDOW_S

STATES = ("open", "resolved")
SEVERITIES = ("info", "warning", "critical")
# Events of a minute arrive within seconds of its end; a round looks at minutes this old.
SETTLE = timedelta(seconds=15)


@dataclass(frozen=True)
class Insight:
    id: str
    kind: str
    subject: str
    severity: str
    state: str
    window_start: datetime
    window_end: datetime
    evidence: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None


@dataclass
class Changes:
    opened: list[Insight] = field(default_factory=list)
    updated: list[Insight] = field(default_factory=list)
    resolved: list[Insight] = field(default_factory=list)


def detect(recent: Recent, tuning: Tuning) -> list[Finding]:
    return [*anomaly_findings(recent, tuning), *pattern_findings(recent, tuning)]


def _worse(a: str, b: str) -> str:
    return max(a, b, key=SEVERITIES.index)


def reconcile(
    open_insights: Sequence[Insight],
    findings: Sequence[Finding],
    now: datetime,
    cooldown: timedelta,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Changes:
    """What this round's findings change: an insight opened per new (kind, subject), the
    open ones still seen updated, and those clear for `cooldown` resolved."""
    open_by_key = {(i.kind, i.subject): i for i in open_insights}
    # The detectors give one finding per (kind, subject); were there two, the last counts.
    by_key = {(f.kind, f.subject): f for f in findings}
    changes = Changes()
    for key, f in by_key.items():
        current = open_by_key.get(key)
        if current is None:
            changes.opened.append(
                Insight(
                    id=new_id(),
                    kind=f.kind,
                    subject=f.subject,
                    severity=f.severity,
                    state="open",
                    window_start=f.window_start,
                    window_end=f.window_end,
                    evidence=f.evidence,
                    created_at=now,
                    updated_at=now,
                )
            )
            continue
        changes.updated.append(
            replace(
                current,
                severity=_worse(current.severity, f.severity),
                window_start=min(current.window_start, f.window_start),
                window_end=max(current.window_end, f.window_end),
                evidence=f.evidence,
                updated_at=now,
            )
        )
    for key, insight in open_by_key.items():
        if key not in by_key and now - insight.window_end >= cooldown:
            changes.resolved.append(
                replace(insight, state="resolved", resolved_at=now, updated_at=now)
            )
    return changes


def as_json(insight: Insight) -> dict[str, Any]:
    return {
        "id": insight.id,
        "kind": insight.kind,
        "subject": insight.subject,
        "severity": insight.severity,
        "state": insight.state,
        "window_start": insight.window_start.isoformat(),
        "window_end": insight.window_end.isoformat(),
        "evidence": insight.evidence,
        "created_at": insight.created_at.isoformat(),
        "resolved_at": insight.resolved_at.isoformat() if insight.resolved_at else None,
    }


def announcements(alerting: set[str], pending: Sequence[Insight]) -> list[tuple[Insight, str]]:
    """The event of each insight whose state is not announced yet. An incident is what
    happens to one subject: the first insight of a subject with none open (`alerting` holds
    those that have one) is `insight.opened`, the alert; another opening on that subject
    while its incident lasts is `insight.joined` (a failure burst is also a new fingerprint,
    and one page is enough); each resolution is `insight.resolved`."""
    alerting = set(alerting)
    out = []
    order = sorted(
        pending,
        key=lambda i: (i.state != "open", -SEVERITIES.index(i.severity), i.created_at, i.id),
    )
    for insight in order:
        if insight.state == "resolved":
            out.append((insight, "insight.resolved"))
        elif insight.subject in alerting:
            out.append((insight, "insight.joined"))
        else:
            alerting.add(insight.subject)
            out.append((insight, "insight.opened"))
    return out


def event_of(insight: Insight, type_: str, source: str) -> events_pb2.Event:
    """Its id names the insight and the state, so a second publication (a crash between
    publishing and committing) is the same event, which webhooks deliver once."""
    event = make_event(type_, f"insight/{insight.id}", as_json(insight), source)
    event.id = f"insight-{insight.id}-{insight.state}"
    return event


def check_window(window_s: int) -> int:
    if window_s < 0 or window_s > MAX_WINDOW_S:
        raise InvalidArgument(
            f"window_s must be between 1 and {MAX_WINDOW_S} seconds (90 days), or 0 for all,"
            f" not {window_s}"
        )
    return window_s


def check_state(state: str) -> str | None:
    if state and state not in STATES:
        raise InvalidArgument(f"state must be one of {', '.join(STATES)}, not {state!r}")
    return state or None


@dataclass(frozen=True)
class Page:
    insights: list[Insight]
    next_page_token: str


class Round(Protocol):
    async def open_insights(self) -> list[Insight]: ...

    async def save(self, changes: Changes) -> None: ...

    async def unannounced(self) -> list[Insight]: ...

    async def announced(self, insights: Sequence[Insight]) -> None: ...


class InsightStore(Protocol):
    async def recent(self, first: datetime, minutes: int) -> Recent: ...

    def round(self) -> AbstractAsyncContextManager[Round | None]: ...

    async def page(
        self,
        after: Cursor | None,
        limit: int,
        subject: str | None,
        state: str | None,
        seen_since: datetime | None,
    ) -> list[Insight]: ...


class Publisher(Protocol):
    @property
    def source(self) -> str: ...

    async def publish_events(self, events: Sequence[events_pb2.Event]) -> None: ...


class Insights:
    def __init__(
        self,
        store: InsightStore,
        events: Publisher,
        cooldown: timedelta,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self._store = store
        self._events = events
        self._cooldown = cooldown
        self._tuning = tuning

    async def list(
        self, page_size: int, token: str, subject: str, state: str, window_s: int, now: datetime
    ) -> Page:
        """Newest first; `window_s` (0: all) keeps those seen in the last seconds."""
        limit = check_page_size(page_size)
        after = parse_page_token(token)
        since = now - timedelta(seconds=check_window(window_s)) if window_s else None
        rows = await self._store.page(after, limit + 1, subject or None, check_state(state), since)
        more = len(rows) > limit
        rows = rows[:limit]
        next_token = page_token((rows[-1].created_at, uuid.UUID(rows[-1].id))) if more else ""
        return Page(rows, next_token)

    async def evaluate(self, now: datetime) -> Changes | None:
        """One round; None when another replica holds this round."""
        last = minute_of((now - SETTLE).timestamp()) - MINUTE
        minutes = self._tuning.lookback_minutes
        recent = await self._store.recent(last - (minutes - 1) * MINUTE, minutes)
        # The detectors are pure CPU: off the event loop.
        findings = await asyncio.to_thread(detect, recent, self._tuning)
        async with self._store.round() as round_:
            if round_ is None:
                return None
            before = await round_.open_insights()
            changes = reconcile(before, findings, now, self._cooldown)
            await round_.save(changes)
            pending = await round_.unannounced()
            quiet = {i.id for i in [*pending, *changes.resolved]}
            alerting = {i.subject for i in before if i.id not in quiet}
            await self._events.publish_events(
                [
                    event_of(insight, type_, self._events.source)
                    for insight, type_ in announcements(alerting, pending)
                ]
            )
            await round_.announced(pending)
        return changes
