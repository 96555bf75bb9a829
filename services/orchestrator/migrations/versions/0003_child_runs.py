"""A run started by a step of another run (a child workflow) knows its parent.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE orchestrator.runs
            ADD COLUMN parent_run_id uuid REFERENCES orchestrator.runs (id),
            ADD COLUMN parent_step text,
            ADD COLUMN depth int NOT NULL DEFAULT 0;
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE orchestrator.runs DROP COLUMN parent_run_id, DROP COLUMN parent_step,"
        " DROP COLUMN depth"
    )
