"""Alembic, one version history per service schema. Each service's `migrations/env.py`
calls `run_env`; `upgrade` runs them from code (service start, tests, the dev launcher)."""

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from libs.common.db import sqlalchemy_url

# One lock for all schemas: migrations of replicas starting together run one at a time.
_MIGRATION_LOCK_ID = 0x61676E74


def upgrade(database_url: str, migrations_dir: Path, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


def run_env(schema: str) -> None:
    """The body of every service's env.py: online migrations of `schema`, serialized by a
    transaction-level advisory lock."""
    url = context.config.attributes["database_url"]
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    with engine.connect() as connection, connection.begin():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            version_table_schema=schema,
            transactional_ddl=True,
        )
        context.run_migrations()
    engine.dispose()
