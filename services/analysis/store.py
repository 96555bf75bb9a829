"""The analysis schema: rollups of what agents did, and the canary analyses made of them."""

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common.paging import Cursor, newest_first
from services.analysis.canary import CanaryAnalysis, Verdict
from services.analysis.history import Fold, Rollup, minute_of
from services.analysis.reports import ErrorSignature, GroupTotals

metadata = sa.MetaData(schema="analysis")

event_rollups = sa.Table(
    "event_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger),
)

task_rollups = sa.Table(
    "task_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("outcome", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("duration_buckets", pg.ARRAY(sa.BigInteger), nullable=False),
)

error_rollups = sa.Table(
    "error_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("example", sa.Text, nullable=False),
)

queue_lag_rollups = sa.Table(
    "queue_lag_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("queue", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("lag_buckets", pg.ARRAY(sa.BigInteger), nullable=False),
    # Attempts that became due in the minute (started or not).
    sa.Column("due", sa.BigInteger, nullable=False),
)

agent_rollups = sa.Table(
    "agent_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("outcome", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

canary_analyses = sa.Table(
    "canary_analyses",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("baseline", sa.Text, nullable=False),
    sa.Column("canary", sa.Text, nullable=False),
    sa.Column("window_s", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("statistics", pg.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Stream entries already folded in: one redelivered after its rows were written but before it
# was acknowledged (a crash in between) is skipped, so nothing is counted twice.
applied_messages = sa.Table(
    "applied_messages",
    metadata,
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
# Far longer than an entry can stay pending before another consumer claims it.
APPLIED_KEPT = timedelta(days=1)


def _add_buckets(table: str, column: str) -> sa.TextClause:
    """Histograms add element by element; Postgres has no operator for it."""
    return sa.text(
        "ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)"
        f" FROM unnest(analysis.{table}.{column}, excluded.{column})"
        " WITH ORDINALITY AS u(a, b, i) ORDER BY i)"
    )


class HistoryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(
        self, message_ids: Sequence[str], fold_of: Callable[[set[str]], Fold], now: datetime
    ) -> None:
        """Folds in the stream entries `message_ids` not folded in before, in one
        transaction: `fold_of` gets the new ones and says what they add."""
        if not message_ids:
            return
        async with self._engine.begin() as conn:
            claim = (
                pg.insert(applied_messages)
                .values([{"message_id": m, "applied_at": now} for m in message_ids])
                .on_conflict_do_nothing()
                .returning(applied_messages.c.message_id)
            )
            fresh = set((await conn.execute(claim)).scalars())
            await conn.execute(
                sa.delete(applied_messages).where(
                    applied_messages.c.applied_at < now - APPLIED_KEPT
                )
            )
            if not fresh:
                return
            await self.add_fold(conn, fold_of(fresh))

    @classmethod
    async def add_fold(cls, conn: AsyncConnection, fold: Fold) -> None:
        await cls._add_counts(conn, fold.events)
        await cls._add_rollups(conn, fold)
        await cls._add_errors(conn, fold)
        await cls._add_lags(conn, fold)
        await cls._add_agents(conn, fold)

    @staticmethod
    async def _add_counts(conn: AsyncConnection, counts: Counter[tuple[datetime, str]]) -> None:
        if not counts:
            return
        rows = [{"minute": m, "type": t, "count": n} for (m, t), n in counts.items()]
        upsert = pg.insert(event_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type"],
            set_={"count": event_rollups.c.count + upsert.excluded["count"]},
        )
        await conn.execute(upsert)

    @staticmethod
    async def _add_rollups(conn: AsyncConnection, fold: Fold) -> None:
        if not fold.rollups:
            return
        rows = [
            {
                "minute": key.minute,
                "type": key.type,
                "queue": key.queue,
                "version": key.version,
                "outcome": outcome,
                "count": rollup.count,
                "duration_buckets": rollup.buckets,
            }
            for (key, outcome), rollup in fold.rollups.items()
        ]
        upsert = pg.insert(task_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type", "queue", "version", "outcome"],
            set_={
                "count": task_rollups.c.count + upsert.excluded["count"],
                "duration_buckets": _add_buckets("task_rollups", "duration_buckets"),
            },
        )
        await conn.execute(upsert)

    @staticmethod
    async def _add_errors(conn: AsyncConnection, fold: Fold) -> None:
        if not fold.errors:
            return
        rows = [
            {
                "minute": key.minute,
                "type": key.type,
                "queue": key.queue,
                "version": key.version,
                "fingerprint": fp,
                "count": seen.count,
                "first_seen": seen.first_seen,
                "last_seen": seen.last_seen,
                "example": seen.example,
            }
            for (key, fp), seen in fold.errors.items()
        ]
        upsert = pg.insert(error_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type", "queue", "version", "fingerprint"],
            set_={
                "count": error_rollups.c.count + upsert.excluded["count"],
                "first_seen": sa.func.least(
                    error_rollups.c.first_seen, upsert.excluded["first_seen"]
                ),
                "last_seen": sa.func.greatest(
                    error_rollups.c.last_seen, upsert.excluded["last_seen"]
                ),
            },
        )
        await conn.execute(upsert)

    @staticmethod
    async def _add_lags(conn: AsyncConnection, fold: Fold) -> None:
        if not fold.lags and not fold.due:
            return
        rows = [
            {
                "minute": key.minute,
                "type": key.type,
                "queue": key.queue,
                "version": key.version,
                "count": rollup.count,
                "lag_buckets": rollup.buckets,
                "due": fold.due[key],
            }
            for key in fold.lags.keys() | fold.due.keys()
            for rollup in [fold.lags.get(key) or Rollup()]
        ]
        upsert = pg.insert(queue_lag_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type", "queue", "version"],
            set_={
                "count": queue_lag_rollups.c.count + upsert.excluded["count"],
                "lag_buckets": _add_buckets("queue_lag_rollups", "lag_buckets"),
                "due": queue_lag_rollups.c.due + upsert.excluded["due"],
            },
        )
        await conn.execute(upsert)

    @staticmethod
    async def _add_agents(conn: AsyncConnection, fold: Fold) -> None:
        if not fold.agents:
            return
        rows = [
            {"minute": m, "type": t, "agent": a, "outcome": o, "count": n}
            for (m, t, a, o), n in fold.agents.items()
        ]
        upsert = pg.insert(agent_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type", "agent", "outcome"],
            set_={"count": agent_rollups.c.count + upsert.excluded["count"]},
        )
        await conn.execute(upsert)

    async def counts_since(self, since: datetime) -> dict[str, int]:
        query = (
            sa.select(event_rollups.c.type, sa.func.sum(event_rollups.c.count))
            .where(event_rollups.c.minute >= since)
            .group_by(event_rollups.c.type)
        )
        async with self._engine.connect() as conn:
            return {t: int(n) for t, n in await conn.execute(query)}

    async def totals_since(self, since: datetime, group_by: str) -> dict[str, GroupTotals]:
        """Per group (a column: type, queue or version), the counts by outcome, the summed
        duration histogram and the error fingerprints of the minutes from `since`'s on."""
        first = minute_of(since.timestamp())
        rollup_group = task_rollups.c[group_by]
        counts = (
            sa.select(rollup_group, task_rollups.c.outcome, sa.func.sum(task_rollups.c.count))
            .where(task_rollups.c.minute >= first)
            .group_by(rollup_group, task_rollups.c.outcome)
        )
        cell = (
            sa.func.unnest(task_rollups.c.duration_buckets)
            .table_valued("n", with_ordinality="i")
            .render_derived(name="cell")
        )
        histogram = (
            sa.select(rollup_group, cell.c.i, sa.func.sum(cell.c.n))
            .select_from(task_rollups)
            .join(cell, sa.true())
            .where(task_rollups.c.minute >= first, cell.c.n > 0)
            .group_by(rollup_group, cell.c.i)
        )
        error_group = error_rollups.c[group_by]
        errors = (
            sa.select(
                error_group,
                error_rollups.c.fingerprint,
                sa.func.sum(error_rollups.c.count),
                sa.func.min(error_rollups.c.first_seen),
                sa.func.max(error_rollups.c.last_seen),
                sa.func.min(error_rollups.c.example),
            )
            .where(error_rollups.c.minute >= first)
            .group_by(error_group, error_rollups.c.fingerprint)
        )
        groups: dict[str, GroupTotals] = {}
        async with self._engine.connect() as conn:
            for group, outcome, n in await conn.execute(counts):
                groups.setdefault(group, GroupTotals()).counts[outcome] = int(n)
            for group, index, n in await conn.execute(histogram):
                groups.setdefault(group, GroupTotals()).histogram[index - 1] += int(n)
            for group, fp, n, first_seen, last_seen, example in await conn.execute(errors):
                groups.setdefault(group, GroupTotals()).errors.append(
                    ErrorSignature(fp, int(n), first_seen, last_seen, example)
                )
        return groups

    async def version_totals(
        self, since: datetime, versions: Sequence[str], type_: str | None
    ) -> dict[str, GroupTotals]:
        """Per version of `versions`, the counts by outcome and the summed duration histogram
        of the minutes from `since`'s on, of one task type or (None) of all."""
        first = minute_of(since.timestamp())
        where = [task_rollups.c.minute >= first, task_rollups.c.version.in_(versions)]
        if type_ is not None:
            where.append(task_rollups.c.type == type_)
        counts = (
            sa.select(
                task_rollups.c.version, task_rollups.c.outcome, sa.func.sum(task_rollups.c.count)
            )
            .where(*where)
            .group_by(task_rollups.c.version, task_rollups.c.outcome)
        )
        cell = (
            sa.func.unnest(task_rollups.c.duration_buckets)
            .table_valued("n", with_ordinality="i")
            .render_derived(name="cell")
        )
        histogram = (
            sa.select(task_rollups.c.version, cell.c.i, sa.func.sum(cell.c.n))
            .select_from(task_rollups)
            .join(cell, sa.true())
            .where(*where, cell.c.n > 0)
            .group_by(task_rollups.c.version, cell.c.i)
        )
        versions_seen: dict[str, GroupTotals] = {}
        async with self._engine.connect() as conn:
            for version, outcome, n in await conn.execute(counts):
                versions_seen.setdefault(version, GroupTotals()).counts[outcome] = int(n)
            for version, index, n in await conn.execute(histogram):
                versions_seen.setdefault(version, GroupTotals()).histogram[index - 1] += int(n)
        return versions_seen

    async def add_canary_analysis(self, analysis: CanaryAnalysis) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.insert(canary_analyses).values(
                    id=uuid.UUID(analysis.id),
                    subject=analysis.subject,
                    baseline=analysis.baseline,
                    canary=analysis.canary,
                    window_s=analysis.window_s,
                    verdict=analysis.verdict.value,
                    statistics=analysis.statistics,
                    created_at=analysis.created_at,
                )
            )

    async def canary_analysis(self, analysis_id: uuid.UUID) -> CanaryAnalysis | None:
        query = sa.select(canary_analyses).where(canary_analyses.c.id == analysis_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _canary_analysis(row)

    async def canary_analyses(
        self, after: Cursor | None, limit: int, subject: str | None
    ) -> list[CanaryAnalysis]:
        """Newest first."""
        query = sa.select(canary_analyses)
        if subject is not None:
            query = query.where(canary_analyses.c.subject == subject)
        query = newest_first(query, canary_analyses, after, limit)
        async with self._engine.connect() as conn:
            return [_canary_analysis(row) for row in await conn.execute(query)]


def _canary_analysis(row: Any) -> CanaryAnalysis:
    return CanaryAnalysis(
        id=str(row.id),
        subject=row.subject,
        baseline=row.baseline,
        canary=row.canary,
        window_s=row.window_s,
        verdict=Verdict(row.verdict),
        statistics=row.statistics,
        created_at=row.created_at,
    )
