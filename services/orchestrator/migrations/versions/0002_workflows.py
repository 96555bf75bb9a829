"""Workflow definitions (versioned), runs, their steps and the tasks each step runs.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE orchestrator.workflows (
            name text NOT NULL,
            version int NOT NULL,
            definition bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, version)
        );
        CREATE TABLE orchestrator.runs (
            id uuid PRIMARY KEY,
            workflow text NOT NULL,
            version int NOT NULL,
            state text NOT NULL,
            -- 1, and one more for each retry: part of every task's idempotency key.
            attempt int NOT NULL DEFAULT 1,
            input bytea NOT NULL,
            output bytea,
            error text NOT NULL DEFAULT '',
            idempotency_key text UNIQUE,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            finished_at timestamptz,
            deadline_at timestamptz,
            FOREIGN KEY (workflow, version) REFERENCES orchestrator.workflows (name, version)
        );
        CREATE INDEX runs_by_workflow ON orchestrator.runs (workflow, created_at DESC, id);
        CREATE INDEX runs_by_created ON orchestrator.runs (created_at DESC, id);
        CREATE INDEX runs_running ON orchestrator.runs (updated_at) WHERE state = 'RUNNING';
        -- One row per task a step runs: item 0 for a plain step, 0..n-1 for a fan-out.
        CREATE TABLE orchestrator.step_tasks (
            run_id uuid NOT NULL REFERENCES orchestrator.runs (id) ON DELETE CASCADE,
            step text NOT NULL,
            item int NOT NULL,
            attempt int NOT NULL,
            task_id uuid,
            state text NOT NULL,
            output bytea,
            error text NOT NULL DEFAULT '',
            started_at timestamptz NOT NULL,
            finished_at timestamptz,
            PRIMARY KEY (run_id, step, item)
        );
        CREATE UNIQUE INDEX step_tasks_by_task ON orchestrator.step_tasks (task_id);
        -- Steps that did not run a task: skipped, empty fan-outs, failed before a task.
        CREATE TABLE orchestrator.step_marks (
            run_id uuid NOT NULL REFERENCES orchestrator.runs (id) ON DELETE CASCADE,
            step text NOT NULL,
            state text NOT NULL,
            error text NOT NULL DEFAULT '',
            at timestamptz NOT NULL,
            PRIMARY KEY (run_id, step)
        );
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE orchestrator.step_marks, orchestrator.step_tasks,"
        " orchestrator.runs, orchestrator.workflows"
    )
