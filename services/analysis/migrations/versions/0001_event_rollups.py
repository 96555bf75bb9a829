"""Per-minute counts of events by type.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        schema="analysis",
    )
