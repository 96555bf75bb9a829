"""A rolling deploy: the next release's migration adds columns while this release's services
run. Their statements are prepared once run a few times on a connection, and Postgres
refuses to run a prepared statement whose result columns changed; they name their columns,
so runs and tasks go on."""

import json

import psycopg

from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from tests.integration.workflow_client import register, start, until_ended
from tests.secure import channel_to

CHAIN = {
    "name": "pair",
    "steps": [
        {"name": "first", "type": "echo", "input": {"n": {"$ref": "input.n"}}},
        {"name": "second", "type": "echo", "depends_on": ["first"],
         "input": {"prev": {"$ref": "steps.first.output"}}},
    ],
}  # fmt: skip
TABLES = (
    "tasks.tasks",
    "orchestrator.runs",
    "orchestrator.step_tasks",
    "orchestrator.step_marks",
    "audit.entries",
)


async def _run_to_the_end(stub: workflows_pb2_grpc.WorkflowServiceStub, n: int) -> W.Run:
    started = await start(stub, "pair", {"n": n})
    return await until_ended(stub, started.run.id)


async def test_runs_go_on_when_the_next_release_adds_columns(
    make_task_agent, make_orchestrator, clean_db
) -> None:
    agent = await make_task_agent()
    orchestrator = await make_orchestrator(agent)
    async with channel_to(orchestrator.server.port, "orchestrator", role="admin") as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(stub, CHAIN)
        # Every statement of a run's path runs well past psycopg's five: prepared.
        for n in range(15):
            assert (await _run_to_the_end(stub, n)).state == W.RUN_STATE_SUCCEEDED
        with psycopg.connect(clean_db, autocommit=True) as conn:
            for table in TABLES:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN added_by_next_release int")
        try:
            after = [await _run_to_the_end(stub, n) for n in range(15, 25)]
        finally:
            with psycopg.connect(clean_db, autocommit=True) as conn:
                for table in TABLES:
                    conn.execute(f"ALTER TABLE {table} DROP COLUMN added_by_next_release")

    assert [run.state for run in after] == [W.RUN_STATE_SUCCEEDED] * len(after)
    # Each run carried its own input through both steps.
    assert [json.loads(run.output)["second"]["prev"]["n"] for run in after] == list(range(15, 25))
