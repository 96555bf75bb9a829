"""A version per task, bumped by every update, so caches can refuse stale writes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        schema="tasks",
    )
    op.execute(
        """
        CREATE FUNCTION tasks.bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.version := OLD.version + 1;
            RETURN NEW;
        END $$;
        CREATE TRIGGER tasks_bump_version BEFORE UPDATE ON tasks.tasks
            FOR EACH ROW EXECUTE FUNCTION tasks.bump_version();
        """
    )
