"""Outbound webhook subscriptions: a URL, the event types it wants, its signing secret.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE orchestrator.webhook_subscriptions (
            id uuid PRIMARY KEY,
            url text NOT NULL,
            event_types text[] NOT NULL,
            -- Sealed with the data keys, bound to the row's id; never answered.
            secret bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            created_by text NOT NULL DEFAULT ''
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE orchestrator.webhook_subscriptions")
