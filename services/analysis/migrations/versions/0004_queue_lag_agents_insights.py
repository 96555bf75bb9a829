"""Queue lag (due to started) and per-agent outcomes in the rollups; insights.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_lag_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("lag_buckets", pg.ARRAY(sa.BigInteger), nullable=False),
        schema="analysis",
    )
    op.create_table(
        "agent_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("outcome", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        schema="analysis",
    )
    # New fingerprints: when was this one first seen, in all the history kept?
    op.create_index(
        "ix_error_rollups_fingerprint",
        "error_rollups",
        ["type", "fingerprint", "first_seen"],
        schema="analysis",
    )
    op.create_table(
        "insights",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evidence", pg.JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        # The state last published as an insight.* event: the outbox of the events.
        sa.Column("announced", sa.Text, nullable=False, server_default=""),
        schema="analysis",
    )
    # One open insight per (kind, subject): one incident is one insight.
    op.create_index(
        "ux_insights_open",
        "insights",
        ["kind", "subject"],
        unique=True,
        schema="analysis",
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index("ix_insights_created", "insights", ["created_at", "id"], schema="analysis")
    op.create_index(
        "ix_insights_unannounced",
        "insights",
        ["id"],
        schema="analysis",
        postgresql_where=sa.text("announced <> state"),
    )


def downgrade() -> None:
    op.drop_table("insights", schema="analysis")
    op.drop_index("ix_error_rollups_fingerprint", "error_rollups", schema="analysis")
    op.drop_table("agent_rollups", schema="analysis")
    op.drop_table("queue_lag_rollups", schema="analysis")
