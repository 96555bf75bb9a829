"""The Redis and PostgreSQL a bench run uses: the servers named by REDIS_URL and DATABASE_URL
when set, else embedded servers started for the run. Either way the bench works in a database
of its own (migrated, dropped afterwards) and under Redis key prefixes of its own."""

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from bench.cpu import parent_of
from dev.embedded import EmbeddedPostgres, EmbeddedRedis
from libs.common.audit import upgrade_audit
from libs.common.migrations import upgrade

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TASK_MIGRATIONS = ROOT / "services/task_agent/migrations"


@dataclass(frozen=True)
class Servers:
    database_url: str  # the bench's own database, migrated
    redis_url: str
    postgres_source: str  # "embedded" or "DATABASE_URL"
    redis_source: str  # "embedded" or "REDIS_URL"

    @property
    def redis_is_ours(self) -> bool:
        return self.redis_source == "embedded"


@contextmanager
def bench_servers() -> Iterator[Servers]:
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    with ExitStack() as stack:
        redis_source = "REDIS_URL" if redis_url else "embedded"
        if not redis_url:
            redis_dir = tempfile.mkdtemp(prefix="agentry-bench-redis-")
            stack.callback(shutil.rmtree, redis_dir, ignore_errors=True)
            redis_url = stack.enter_context(EmbeddedRedis(redis_dir)).url
        postgres_source = "DATABASE_URL" if database_url else "embedded"
        if not database_url:
            # As root, postgres runs as another user, which must reach its data directory.
            pg_dir = Path(tempfile.mkdtemp(prefix="agentry-bench-pg-"))
            stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            pg_dir.chmod(0o755)
            database_url = stack.enter_context(EmbeddedPostgres(pg_dir / "data")).url
        own = stack.enter_context(_own_database(database_url))
        yield Servers(own, redis_url, postgres_source, redis_source)


@contextmanager
def _own_database(server_url: str) -> Iterator[str]:
    server = make_url(server_url).set(drivername="postgresql")
    name = f"agentry_bench_{uuid.uuid4().hex[:10]}"
    admin = server.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        upgrade_audit(url)
        upgrade(url, TASK_MIGRATIONS)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        log.info("dropped database %s", name)


def redis_db_url(url: str, db: int) -> str:
    """`url` pointing at another logical database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def delete_keys(url: str, prefix: str) -> int:
    """Deletes every key under `prefix`; answers how many."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def reset_tasks(database_url: str, redis_url: str, keys: list[str]) -> None:
    """Empties the task tables and drops `keys` between two phases, while the agent is idle,
    so each phase starts from the same state."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE tasks.tasks, tasks.dead_letters")
        conn.execute("VACUUM ANALYZE tasks.tasks")
    client = redis.Redis.from_url(redis_url)
    try:
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def server_pids(servers: Servers) -> tuple[int | None, int | None]:
    """(postmaster pid, redis pid) when those servers run on this machine, else None."""
    postmaster = redis_pid = None
    with psycopg.connect(servers.database_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if row is not None and Path(f"/proc/{row[0]}").exists():
        postmaster = parent_of(row[0])
    client = redis.Redis.from_url(servers.redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() in ("redis-server", "valkey-server"):
            redis_pid = pid
    except OSError:
        pass
    return postmaster, redis_pid
