"""Per-minute task rollups (counts and duration histograms per type, queue, agent version
and outcome), error fingerprints, and the stream entries already folded in.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "task_rollups",
        *_key_columns(),
        sa.Column("outcome", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("duration_buckets", pg.ARRAY(sa.BigInteger), nullable=False),
        schema="analysis",
    )
    op.create_table(
        "error_rollups",
        *_key_columns(),
        sa.Column("fingerprint", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("example", sa.Text, nullable=False),
        schema="analysis",
    )

    op.create_table(
        "applied_messages",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        schema="analysis",
    )
    op.create_index(
        "ix_applied_messages_applied_at", "applied_messages", ["applied_at"], schema="analysis"
    )


def downgrade() -> None:
    op.drop_table("applied_messages", schema="analysis")
    op.drop_table("error_rollups", schema="analysis")
    op.drop_table("task_rollups", schema="analysis")
