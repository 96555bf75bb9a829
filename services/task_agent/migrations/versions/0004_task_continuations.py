"""The continuations of each task (the tasks it submits once it succeeds), sealed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("continuations", sa.LargeBinary), schema="tasks")
