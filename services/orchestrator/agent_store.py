"""The registry's table."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

from services.orchestrator.registry import AgentRecord

metadata = sa.MetaData(schema="orchestrator")

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("role", sa.Text),
    sa.Column("instance", sa.Text),
    sa.Column("version", sa.Text),
    sa.Column("state", sa.Text),
    sa.Column("task_types", pg.ARRAY(sa.Text)),
    sa.Column("address", sa.Text),
    sa.Column("load", sa.Float),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("last_seen_at", sa.DateTime(timezone=True)),
)


def _record(row: Any) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        role=row.role,
        instance=row.instance,
        version=row.version,
        state=row.state,
        task_types=tuple(row.task_types),
        address=row.address,
        load=row.load,
        started_at=row.started_at,
        last_seen_at=row.last_seen_at,
    )


class AgentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def register(self, record: AgentRecord) -> AgentRecord:
        values = {
            "id": record.id,
            "role": record.role,
            "instance": record.instance,
            "version": record.version,
            "state": record.state,
            "task_types": list(record.task_types),
            "address": record.address,
            "load": record.load,
            "started_at": sa.func.now(),
            "last_seen_at": sa.func.now(),
        }
        upsert = pg.insert(agents).values(values)
        query = upsert.on_conflict_do_update(
            index_elements=["id"], set_={k: upsert.excluded[k] for k in values if k != "id"}
        ).returning(*agents.c)
        async with self._engine.connect() as conn:
            return _record((await conn.execute(query)).one())

    async def heartbeat(self, agent_id: str, state: str, load: float) -> AgentRecord | None:
        query = (
            sa.update(agents)
            .where(agents.c.id == agent_id)
            .values(state=state, load=load, last_seen_at=sa.func.now())
            .returning(*agents.c)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row else None

    async def find(self, role: str | None) -> list[AgentRecord]:
        query = sa.select(agents).order_by(agents.c.role, agents.c.id)
        if role:
            query = query.where(agents.c.role == role)
        async with self._engine.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def mark_unresponsive(self, agent_id: str) -> None:
        query = (
            sa.update(agents)
            .where(agents.c.id == agent_id, agents.c.state != "TERMINATED")
            .values(state="UNRESPONSIVE")
        )
        async with self._engine.connect() as conn:
            await conn.execute(query)
