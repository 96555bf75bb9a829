"""Key rotation: re-seals every stored payload and result that is not under the keyring's
write key (plaintext stored while encryption was off included), so that older keys can
then leave the key file. Dead letters hold no payload of their own: their tasks' rows are
rotated with the rest.

Runs beside live agents: rows are read in batches in id order (keyset pagination), and each
value is replaced only if it still holds what was read (compare-and-set), so a value that
changed meanwhile is left to its writer. Values already under the write key are skipped: a
second run rewrites nothing. Operators run it as `agentry keys rotate`."""

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.crypto import Keyring
from libs.common.db import create_engine
from services.task_agent.tables import payload_aad, result_aad, tasks

_FIELDS: dict[str, Callable[[uuid.UUID], bytes]] = {"payload": payload_aad, "result": result_aad}


async def rotate(database_url: str, keyring: Keyring, batch_size: int = 500) -> int:
    """Answers the number of values rewritten."""
    if not keyring.enabled:
        raise ValueError("rotation needs a keyring with a write key")
    prefix = sa.literal(keyring.write_prefix, sa.LargeBinary)
    stale = [
        sa.func.substr(tasks.c[name], 1, len(keyring.write_prefix)) != prefix for name in _FIELDS
    ]
    engine = create_engine(database_url, pool_size=1)
    rewritten = 0
    after: uuid.UUID | None = None
    try:
        while True:
            query = (
                sa.select(tasks.c.id, *(tasks.c[name] for name in _FIELDS))
                .where(sa.or_(*stale))
                .order_by(tasks.c.id)
                .limit(batch_size)
            )
            if after is not None:
                query = query.where(tasks.c.id > after)
            async with engine.begin() as conn:
                rows = (await conn.execute(query)).all()
                if not rows:
                    return rewritten
                for name, aad in _FIELDS.items():
                    rewritten += await _reseal(conn, keyring, name, aad, rows)
            after = rows[-1].id
    finally:
        await engine.dispose()


async def _reseal(
    conn: AsyncConnection,
    keyring: Keyring,
    name: str,
    aad: Callable[[uuid.UUID], bytes],
    rows: Sequence[Any],
) -> int:
    ids, old, new = [], [], []
    for row in rows:
        value = getattr(row, name)
        if value is None or value.startswith(keyring.write_prefix):
            continue
        ids.append(row.id)
        old.append(value)
        new.append(keyring.encrypt(keyring.decrypt(value, aad(row.id)), aad(row.id)))
    if not ids:
        return 0
    # `name` is one of _FIELDS' keys, never input.
    done = await conn.execute(
        sa.text(
            f"""
            UPDATE tasks.tasks AS t SET {name} = v.new
              FROM unnest(CAST(:ids AS uuid[]), CAST(:old AS bytea[]), CAST(:new AS bytea[]))
                   AS v(id, old, new)
             WHERE t.id = v.id AND t.{name} = v.old
            """
        ),
        {"ids": ids, "old": old, "new": new},
    )
    return done.rowcount
