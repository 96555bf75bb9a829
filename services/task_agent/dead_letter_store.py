"""Dead letters: failed tasks kept for an operator to inspect, redrive or purge. A letter
holds no copy of its task's payload: it points at the task row, sealed like any other."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.crypto import Keyring
from services.task_agent.model import DeadLetter, NewTask, Task
from services.task_agent.tables import dead_letters, insert_values, row_to_task, tasks


class DeadLetterStore:
    def __init__(self, engine: AsyncEngine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring

    async def page(
        self, queue: str | None, type_: str | None, limit: int, offset: int
    ) -> list[DeadLetter]:
        query = (
            sa.select(dead_letters, tasks)
            .join(tasks, tasks.c.id == dead_letters.c.task_id)
            .order_by(dead_letters.c.created_at.desc(), dead_letters.c.id)
            .limit(limit)
            .offset(offset)
        )
        if queue:
            query = query.where(tasks.c.queue == queue)
        if type_:
            query = query.where(tasks.c.type == type_)
        query = query.with_only_columns(
            dead_letters.c.id.label("dl_id"),
            dead_letters.c.reason.label("dl_reason"),
            dead_letters.c.created_at.label("dl_created_at"),
            dead_letters.c.redriven_task_id.label("dl_redriven"),
            *tasks.c,
        )
        async with self._engine.connect() as conn:
            return [self._letter(row) for row in await conn.execute(query)]

    async def get(self, dead_letter_id: uuid.UUID) -> DeadLetter | None:
        query = (
            sa.select(
                dead_letters.c.id.label("dl_id"),
                dead_letters.c.reason.label("dl_reason"),
                dead_letters.c.created_at.label("dl_created_at"),
                dead_letters.c.redriven_task_id.label("dl_redriven"),
                *tasks.c,
            )
            .join(tasks, tasks.c.id == dead_letters.c.task_id)
            .where(dead_letters.c.id == dead_letter_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return self._letter(row) if row else None

    async def redrive(self, dead_letter_id: uuid.UUID, new: NewTask, now: datetime) -> Task | None:
        """Stores the new task and links it to the dead letter, once: a second redrive of the
        same letter is refused (None)."""
        async with self._engine.begin() as conn:
            linked = await conn.execute(
                sa.update(dead_letters)
                .where(
                    dead_letters.c.id == dead_letter_id, dead_letters.c.redriven_task_id.is_(None)
                )
                .values(redriven_task_id=new.id)
            )
            if linked.rowcount != 1:
                return None
            row = (
                await conn.execute(
                    pg.insert(tasks)
                    .values(insert_values(new, now, self._keyring))
                    .returning(*tasks.c)
                )
            ).first()
        return row_to_task(row, self._keyring)

    async def purge(self, queue: str | None, type_: str | None, older_than: datetime | None) -> int:
        query = sa.delete(dead_letters)
        if queue or type_:
            owned = sa.select(tasks.c.id)
            if queue:
                owned = owned.where(tasks.c.queue == queue)
            if type_:
                owned = owned.where(tasks.c.type == type_)
            query = query.where(dead_letters.c.task_id.in_(owned))
        if older_than:
            query = query.where(dead_letters.c.created_at < older_than)
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount

    def _letter(self, row: Any) -> DeadLetter:
        return DeadLetter(
            row.dl_id,
            row_to_task(row, self._keyring),
            row.dl_reason,
            row.dl_created_at,
            row.dl_redriven,
        )
