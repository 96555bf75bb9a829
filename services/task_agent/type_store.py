"""Task types that running agents advertise, with their defaults."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

from services.task_agent.model import RetryPolicy, TaskType
from services.task_agent.tables import task_types, type_agents

NOW = sa.func.now()


class TypeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def advertise(self, types: Sequence[TaskType], agent: str) -> None:
        if not types:
            return
        rows = [
            {
                "name": t.name,
                "queue": t.queue,
                "max_attempts": t.retry.max_attempts,
                "initial_backoff_s": t.retry.initial_backoff_s,
                "max_backoff_s": t.retry.max_backoff_s,
                "backoff_multiplier": t.retry.multiplier,
                "timeout_s": t.timeout_s,
                "fallback_type": t.fallback_type,
                "rate_limit_per_s": t.rate_limit_per_s,
                "concurrency_limit": t.concurrency_limit,
                "updated_at": NOW,
            }
            for t in types
        ]
        upsert = pg.insert(task_types).values(rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["name"],
            set_={c: upsert.excluded[c] for c in rows[0] if c != "name"},
        )
        seen = pg.insert(type_agents).values(
            [{"type": t.name, "agent": agent, "seen_at": NOW} for t in types]
        )
        seen = seen.on_conflict_do_update(
            index_elements=["type", "agent"], set_={"seen_at": seen.excluded.seen_at}
        )
        async with self._engine.begin() as conn:
            await conn.execute(upsert)
            await conn.execute(seen)

    async def withdraw(self, agent: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(type_agents).where(type_agents.c.agent == agent))

    async def live_types(self, seen_within_s: float) -> list[TaskType]:
        agents = (
            sa.select(sa.func.array_agg(type_agents.c.agent))
            .where(
                type_agents.c.type == task_types.c.name,
                type_agents.c.seen_at
                > NOW - sa.func.make_interval(0, 0, 0, 0, 0, 0, seen_within_s),
            )
            .scalar_subquery()
        )
        query = sa.select(task_types, agents.label("agents")).order_by(task_types.c.name)
        async with self._engine.connect() as conn:
            return [
                TaskType(
                    name=row.name,
                    queue=row.queue,
                    retry=RetryPolicy(
                        row.max_attempts,
                        row.initial_backoff_s,
                        row.max_backoff_s,
                        row.backoff_multiplier,
                    ),
                    timeout_s=row.timeout_s,
                    fallback_type=row.fallback_type,
                    rate_limit_per_s=row.rate_limit_per_s,
                    concurrency_limit=row.concurrency_limit,
                    agents=tuple(sorted(row.agents or ())),
                )
                for row in await conn.execute(query)
            ]
