"""How long history is kept: per-minute rollups older than `AGENTRY_ROLLUP_MINUTES_KEPT_S`
are merged into one row per hour (the row of the hour's first minute), and every rollup, and
every resolved insight, older than `AGENTRY_ROLLUP_RETENTION_S` is deleted.

Merging moves rows with `DELETE … RETURNING` and adds what was deleted to the hour's row in the
same transaction: whatever a concurrent writer or a second replica does, each count lands in
exactly one row. A report over a window that starts inside a merged hour counts the whole hour."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.analysis.history import ErrorSeen, Fold, Key, Rollup
from services.analysis.insights_store import insights
from services.analysis.reports import add_histograms
from services.analysis.store import (
    HistoryStore,
    agent_rollups,
    error_rollups,
    event_rollups,
    queue_lag_rollups,
    task_rollups,
)

# Rows moved per statement: bounded transactions on a large backlog.
BATCH = 5000


def hour_of(minute: datetime) -> datetime:
    seconds = int(minute.timestamp())
    return datetime.fromtimestamp(seconds - seconds % 3600, tz=UTC)


def _key(row: Any) -> Key:
    return Key(hour_of(row.minute), row.type, row.queue, row.version)


def _events(fold: Fold, row: Any) -> None:
    fold.events[(hour_of(row.minute), row.type)] += row.count


def _task(fold: Fold, row: Any) -> None:
    rollup = fold.rollups.setdefault((_key(row), row.outcome), Rollup())
    rollup.count += row.count
    add_histograms(rollup.buckets, row.duration_buckets)


def _lag(fold: Fold, row: Any) -> None:
    rollup = fold.lags.setdefault(_key(row), Rollup())
    rollup.count += row.count
    add_histograms(rollup.buckets, row.lag_buckets)
    fold.due[_key(row)] += row.due


def _agent(fold: Fold, row: Any) -> None:
    fold.agents[(hour_of(row.minute), row.type, row.agent, row.outcome)] += row.count


def _error(fold: Fold, row: Any) -> None:
    at = (_key(row), row.fingerprint)
    seen = fold.errors.get(at)
    if seen is None:
        fold.errors[at] = ErrorSeen(row.count, row.first_seen, row.last_seen, row.example)
        return
    seen.count += row.count
    seen.first_seen = min(seen.first_seen, row.first_seen)
    seen.last_seen = max(seen.last_seen, row.last_seen)


_MERGES: list[tuple[sa.Table, Callable[[Fold, Any], None]]] = [
    (event_rollups, _events),
    (task_rollups, _task),
    (queue_lag_rollups, _lag),
    (agent_rollups, _agent),
    (error_rollups, _error),
]


async def _move(conn: AsyncConnection, table: sa.Table, before: datetime) -> list[Any]:
    """Deletes up to BATCH of `table`'s minute rows older than `before` that are not the row
    of their hour, and answers them."""
    name = f"analysis.{table.name}"
    query = sa.text(
        f"DELETE FROM {name} WHERE ctid IN ("
        f" SELECT ctid FROM {name} WHERE minute < :before"
        "  AND extract(epoch FROM minute)::bigint % 3600 <> 0 LIMIT :batch)"
        f" RETURNING {', '.join(column.name for column in table.c)}"
    )
    return list(await conn.execute(query, {"before": before, "batch": BATCH}))


class Retention:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def downsample(self, before: datetime) -> int:
        """Merges the minute rows older than `before` into hourly rows; answers how many
        rows it merged."""
        merged = 0
        for table, add in _MERGES:
            while True:
                async with self._engine.begin() as conn:
                    rows = await _move(conn, table, before)
                    fold = Fold()
                    for row in rows:
                        add(fold, row)
                    await HistoryStore.add_fold(conn, fold)
                merged += len(rows)
                if len(rows) < BATCH:
                    break
        return merged

    async def expire(self, before: datetime) -> int:
        """Deletes the rollups, and the resolved insights, older than `before`."""
        deleted = 0
        async with self._engine.begin() as conn:
            for table, _ in _MERGES:
                result = await conn.execute(sa.delete(table).where(table.c.minute < before))
                deleted += result.rowcount
            result = await conn.execute(
                sa.delete(insights).where(
                    insights.c.state == "resolved", insights.c.resolved_at < before
                )
            )
            deleted += result.rowcount
        return deleted
