"""Real Redis and PostgreSQL for the whole suite: the servers named by REDIS_URL and
DATABASE_URL when set, else embedded servers started for the session. Each session gets
its own database; each test its own Redis key prefix and empty tables."""

import os

# Before anything imports grpc: see GRPC_ENABLE_FORK_SUPPORT in the Makefile.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as redis
from psycopg import sql
from sqlalchemy.engine import make_url

from dev.embedded import EmbeddedPostgres, EmbeddedRedis
from libs.common.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
# Schema -> the migrations of the service that owns it.
SERVICE_MIGRATIONS = {
    "tasks": ROOT / "services/task_agent/migrations",
    "orchestrator": ROOT / "services/orchestrator/migrations",
    "analysis": ROOT / "services/analysis/migrations",
    "audit": ROOT / "libs/common/audit_migrations",
}


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(postgres server URL, redis URL)."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    started: list[EmbeddedRedis | EmbeddedPostgres] = []
    if not redis_url:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        server.start()
        started.append(server)
        redis_url = server.url
    pg_dir = None
    if not database_url:
        # Not under pytest's tmp dir: as root, postgres runs as another user, which must
        # be able to reach its data directory.
        pg_dir = Path(tempfile.mkdtemp(prefix="agentry-test-pg-"))
        pg_dir.chmod(0o755)
        pg = EmbeddedPostgres(pg_dir / "data", db_name="agentry")
        pg.start()
        started.append(pg)
        database_url = pg.url
    yield database_url, redis_url
    for server in reversed(started):
        server.stop()
    if pg_dir is not None:
        shutil.rmtree(pg_dir, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, migrated database on the server `server_url` names."""
    server = make_url(server_url)
    name = f"agentry_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    for migrations in SERVICE_MIGRATIONS.values():
        upgrade(url, migrations)
    return url


def drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _admin_url(server_url: str) -> str:
    return make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this session's own, migrated, dropped at the end."""
    url = create_database(server_urls[0])
    yield url
    drop_database(server_urls[0], url)


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    return server_urls[1]


@pytest.fixture
def clean_db(database_url: str) -> str:
    """The session database with every service table emptied first."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = ANY(%s) AND tablename <> 'alembic_version'",
            [list(SERVICE_MIGRATIONS)],
        ).fetchall()
        if tables:
            conn.execute(f"TRUNCATE {', '.join(t for (t,) in tables)} CASCADE")
    return database_url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
