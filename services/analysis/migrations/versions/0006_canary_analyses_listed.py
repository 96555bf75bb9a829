"""Canary analyses listed newest first, all of them or one subject's.

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_canary_analyses_created",
        "canary_analyses",
        ["created_at", "id"],
        schema="analysis",
    )
    op.create_index(
        "ix_canary_analyses_subject",
        "canary_analyses",
        ["subject", "created_at", "id"],
        schema="analysis",
    )


def downgrade() -> None:
    op.drop_index("ix_canary_analyses_subject", "canary_analyses", schema="analysis")
    op.drop_index("ix_canary_analyses_created", "canary_analyses", schema="analysis")
