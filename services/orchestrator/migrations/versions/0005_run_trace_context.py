"""A run's trace context: the tasks of its steps continue the trace of the request that
started it, however their submissions are batched.

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.runs ADD COLUMN trace_context jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE orchestrator.runs DROP COLUMN trace_context")
