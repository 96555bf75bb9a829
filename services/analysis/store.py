"""The analysis schema: rollups of what agents did."""

from collections import Counter
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = sa.MetaData(schema="analysis")

event_rollups = sa.Table(
    "event_rollups",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger),
)


class HistoryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_counts(self, counts: Counter[tuple[datetime, str]]) -> None:
        if not counts:
            return
        rows = [{"minute": m, "type": t, "count": n} for (m, t), n in counts.items()]
        upsert = pg.insert(event_rollups).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "type"],
            set_={"count": event_rollups.c.count + upsert.excluded["count"]},
        )
        async with self._engine.begin() as conn:
            await conn.execute(upsert)

    async def counts_since(self, since: datetime) -> dict[str, int]:
        query = (
            sa.select(event_rollups.c.type, sa.func.sum(event_rollups.c.count))
            .where(event_rollups.c.minute >= since)
            .group_by(event_rollups.c.type)
        )
        async with self._engine.connect() as conn:
            return {t: int(n) for t, n in await conn.execute(query)}
