"""PostgreSQL through SQLAlchemy 2 async on psycopg 3. No session state outlives a
transaction, so the same code runs behind a transaction-mode pooler (one that keeps
protocol-level prepared statements, as PgBouncer 1.21 and later do with
`max_prepared_statements` set; otherwise turn prepared statements off).

Statements are prepared once run a few times on a connection: planning was a third of the
database's time per workflow step. A statement names the columns it reads (no `SELECT *` or
`RETURNING *`): a column another release adds while this one runs leaves its prepared
statements' results unchanged, which Postgres requires of them."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://…` as users write it, with the psycopg 3 driver SQLAlchemy needs."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def create_engine(
    database_url: str, pool_size: int = 10, prepared_statements: bool = True
) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (a round trip per checkout): a connection a restart broke fails one
        # call and is replaced; connections are recycled before servers drop idle ones.
        pool_recycle=1800,
        # psycopg's default: a statement is prepared once it has run five times on a connection.
        connect_args={"prepare_threshold": 5 if prepared_statements else None},
    )


_AUTOCOMMIT: WeakKeyDictionary[AsyncEngine, AsyncEngine] = WeakKeyDictionary()


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection's psycopg connection itself, in autocommit mode (a statement is
    its own transaction; `transaction()` opens one). For the hot statements: SQLAlchemy's
    per-statement and per-row work is a good part of their cost, and psycopg's pipeline
    mode sends several statements in one round trip."""
    autocommit = _AUTOCOMMIT.get(engine)
    if autocommit is None:
        # Made once per engine: making it is a good part of a short statement's cost.
        autocommit = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        raw = await conn.get_raw_connection()
        yield raw.driver_connection  # type: ignore[misc]
