"""Insights in the analysis schema, and the recent rollups the detectors read."""

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common.paging import Cursor, newest_first
from services.analysis.detectors import MINUTE, Recent
from services.analysis.insights import Changes, Insight
from services.analysis.store import (
    agent_rollups,
    error_rollups,
    metadata,
    queue_lag_rollups,
    task_rollups,
)

insights = sa.Table(
    "insights",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("evidence", pg.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("announced", sa.Text, nullable=False),
)

# One round of insights at a time across replicas (pg_try_advisory_xact_lock's key).
_ROUND_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(hashtext('analysis.insights'))")


def _insight(row: Any) -> Insight:
    return Insight(
        id=str(row.id),
        kind=row.kind,
        subject=row.subject,
        severity=row.severity,
        state=row.state,
        window_start=row.window_start,
        window_end=row.window_end,
        evidence=row.evidence,
        created_at=row.created_at,
        updated_at=row.updated_at,
        resolved_at=row.resolved_at,
    )


def _values(i: Insight) -> dict[str, Any]:
    return {
        "severity": i.severity,
        "state": i.state,
        "window_start": i.window_start,
        "window_end": i.window_end,
        "evidence": i.evidence,
        "updated_at": i.updated_at,
        "resolved_at": i.resolved_at,
    }


class InsightRound:
    """The round's transaction, holding the lock."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def open_insights(self) -> list[Insight]:
        rows = await self._conn.execute(sa.select(insights).where(insights.c.state == "open"))
        return [_insight(r) for r in rows]

    async def save(self, changes: Changes) -> None:
        if changes.opened:
            await self._conn.execute(
                sa.insert(insights),
                [
                    {
                        "id": uuid.UUID(i.id),
                        "kind": i.kind,
                        "subject": i.subject,
                        "created_at": i.created_at,
                        "announced": "",
                        **_values(i),
                    }
                    for i in changes.opened
                ],
            )
        for i in [*changes.updated, *changes.resolved]:
            await self._conn.execute(
                sa.update(insights).where(insights.c.id == uuid.UUID(i.id)).values(**_values(i))
            )

    async def unannounced(self) -> list[Insight]:
        query = (
            sa.select(insights)
            .where(insights.c.announced != insights.c.state)
            .order_by(insights.c.created_at, insights.c.id)
            .limit(1000)
        )
        return [_insight(r) for r in await self._conn.execute(query)]

    async def announced(self, done: Sequence[Insight]) -> None:
        for i in done:
            await self._conn.execute(
                sa.update(insights)
                .where(insights.c.id == uuid.UUID(i.id))
                .values(announced=i.state)
            )


class InsightStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def round(self) -> AsyncIterator[InsightRound | None]:
        async with self._engine.begin() as conn:
            locked = (await conn.execute(_ROUND_LOCK)).scalar_one()
            yield InsightRound(conn) if locked else None

    async def page(
        self,
        after: Cursor | None,
        limit: int,
        subject: str | None,
        state: str | None,
        seen_since: datetime | None,
    ) -> list[Insight]:
        """Newest first."""
        query = sa.select(insights)
        if subject is not None:
            query = query.where(insights.c.subject == subject)
        if state is not None:
            query = query.where(insights.c.state == state)
        if seen_since is not None:
            query = query.where(insights.c.window_end >= seen_since)
        query = newest_first(query, insights, after, limit)
        async with self._engine.connect() as conn:
            return [_insight(r) for r in await conn.execute(query)]

    async def recent(self, first: datetime, minutes: int) -> Recent:
        """The rollups of `minutes` minutes from `first` on, and when each fingerprint seen in
        them was first seen in all the history kept."""
        recent = Recent(first, minutes)
        last = first + minutes * MINUTE
        t, lag, agent, err = task_rollups.c, queue_lag_rollups.c, agent_rollups.c, error_rollups.c
        async with self._engine.connect() as conn:
            for row in await conn.execute(
                sa.select(
                    t.minute, t.type, t.version, t.outcome, t.count, t.duration_buckets
                ).where(t.minute >= first, t.minute < last)
            ):
                recent.add_outcome(*row)
            for agent_row in await conn.execute(
                sa.select(agent.minute, agent.type, agent.agent, agent.outcome, agent.count).where(
                    agent.minute >= first, agent.minute < last
                )
            ):
                recent.add_agent(*agent_row)
            for lag_row in await conn.execute(
                sa.select(lag.minute, lag.type, lag.count, lag.lag_buckets, lag.due).where(
                    lag.minute >= first, lag.minute < last
                )
            ):
                recent.add_lag(*lag_row)
            for error_row in await conn.execute(
                sa.select(err.minute, err.type, err.fingerprint, err.count, err.example).where(
                    err.minute >= first, err.minute < last
                )
            ):
                recent.add_error(*error_row)
            seen_in_window = (
                sa.select(err.type, err.fingerprint)
                .where(err.minute >= first, err.minute < last)
                .distinct()
                .subquery()
            )
            earliest = await conn.execute(
                sa.select(err.type, err.fingerprint, sa.func.min(err.first_seen))
                .join(
                    seen_in_window,
                    sa.and_(
                        seen_in_window.c.type == err.type,
                        seen_in_window.c.fingerprint == err.fingerprint,
                    ),
                )
                .group_by(err.type, err.fingerprint)
            )
            for type_, fp, seen in earliest:
                recent.first_seen[(type_, fp)] = seen
        return recent
