"""Tasks and dead letters.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "tasks"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("result", sa.LargeBinary),
        sa.Column("error_reason", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("error_kind", sa.Text),
        # The fencing token: a claim increments it, a result must carry the current one.
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("initial_backoff_s", sa.Float, nullable=False),
        sa.Column("max_backoff_s", sa.Float, nullable=False),
        sa.Column("backoff_multiplier", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True)),
        sa.Column("fallback_type", sa.Text),
        sa.Column("parent_id", pg.UUID(as_uuid=True)),
        sa.Column("concurrency_key", sa.Text),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("labels", pg.JSONB, nullable=False, server_default="{}"),
        # When a QUEUED or RETRYING task is due.
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        # When it was last put on its stream; the reconciler re-dispatches stale ones.
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("agent", sa.Text),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state IN ('QUEUED','RUNNING','RETRYING','SUCCEEDED','FAILED','CANCELLED')",
            name="tasks_state_known",
        ),
        schema=SCHEMA,
    )
    # What the reconciler and queue statistics scan: work that is not finished.
    op.create_index(
        "tasks_pending",
        "tasks",
        ["queue", "run_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("state IN ('QUEUED','RETRYING')"),
    )
    op.create_index(
        "tasks_running_lease",
        "tasks",
        ["lease_expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'RUNNING'"),
    )
    op.create_index("tasks_listing", "tasks", ["created_at", "id"], schema=SCHEMA)
    op.create_table(
        "dead_letters",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "task_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey(f"{SCHEMA}.tasks.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redriven_task_id", pg.UUID(as_uuid=True)),
        schema=SCHEMA,
    )
    # Task types advertised by running agents, with their defaults.
    op.create_table(
        "task_types",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("initial_backoff_s", sa.Float, nullable=False),
        sa.Column("max_backoff_s", sa.Float, nullable=False),
        sa.Column("backoff_multiplier", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("fallback_type", sa.Text),
        sa.Column("rate_limit_per_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("concurrency_limit", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "type_agents",
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
