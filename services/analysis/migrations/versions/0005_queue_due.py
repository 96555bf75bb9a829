"""Attempts that became due, per minute: a queue whose due tasks stop starting shows.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "queue_lag_rollups",
        sa.Column("due", sa.BigInteger, nullable=False, server_default="0"),
        schema="analysis",
    )


def downgrade() -> None:
    op.drop_column("queue_lag_rollups", "due", schema="analysis")
