"""Orchestrators side by side share the runs without dispatching a step twice and fire a
schedule once; a wide fan-out and a long chain complete; events start workflows."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import psycopg

from agentry.tasks.v1 import tasks_pb2 as S
from agentry.tasks.v1 import tasks_pb2_grpc
from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from tests.integration.workflow_client import register, start, until_ended
from tests.secure import channel_to


def _chain(name: str, length: int) -> dict:
    steps = [{"name": "s0", "type": "echo", "input": {"n": 0}}]
    for i in range(1, length):
        steps.append(
            {
                "name": f"s{i}",
                "type": "echo",
                "depends_on": [f"s{i - 1}"],
                "input": {"n": i, "prev": {"$ref": f"steps.s{i - 1}.output.n"}},
            }
        )
    return {"name": name, "steps": steps}


async def test_two_orchestrators_share_the_runs_and_dispatch_each_step_once(
    task_agent, make_orchestrator, clean_db
) -> None:
    first = await make_orchestrator(task_agent)
    second = await make_orchestrator(task_agent)
    async with (
        channel_to(first.server.port, "orchestrator") as a,
        channel_to(second.server.port, "orchestrator") as b,
    ):
        stubs = [
            workflows_pb2_grpc.WorkflowServiceStub(a),
            workflows_pb2_grpc.WorkflowServiceStub(b),
        ]
        await register(stubs[0], _chain("three", 3))
        started = await asyncio.gather(*(start(stubs[i % 2], "three", {}) for i in range(30)))
        runs = await asyncio.gather(*(until_ended(stubs[1], s.run.id, 60) for s in started))
    assert {r.state for r in runs} == {W.RUN_STATE_SUCCEEDED}
    with psycopg.connect(clean_db) as conn:
        tasks, keys = conn.execute(
            "SELECT count(*), count(DISTINCT idempotency_key) FROM tasks.tasks"
        ).fetchone()
    assert tasks == keys == 30 * 3


async def test_a_thousand_wide_fan_out_completes_in_order(task_agent, make_orchestrator) -> None:
    orchestrator = await make_orchestrator(task_agent)
    async with channel_to(orchestrator.server.port, "orchestrator") as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        wide = {
            "name": "wide",
            "steps": [
                {"name": "each", "type": "echo", "for_each": {"$ref": "input.items"},
                 "input": {"i": {"$ref": "item"}}},
                {"name": "sum", "type": "echo", "depends_on": ["each"],
                 "input": {"all": {"$ref": "steps.each.output"}}},
            ],
        }  # fmt: skip
        await register(stub, wide)
        started = await start(stub, "wide", {"items": list(range(1000))})
        run = await until_ended(stub, started.run.id, 120)
    assert run.state == W.RUN_STATE_SUCCEEDED
    steps = {s.name: s for s in run.steps}
    assert json.loads(steps["sum"].output)["all"] == [{"i": i} for i in range(1000)]
    assert len(steps["each"].task_ids) == 1000


async def test_a_fifty_step_chain_completes(task_agent, make_orchestrator) -> None:
    orchestrator = await make_orchestrator(task_agent)
    async with channel_to(orchestrator.server.port, "orchestrator") as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(stub, _chain("long", 50))
        started = await start(stub, "long", {})
        run = await until_ended(stub, started.run.id, 120)
    assert run.state == W.RUN_STATE_SUCCEEDED, run.error
    assert json.loads({s.name: s for s in run.steps}["s49"].output) == {"n": 49, "prev": 48}


async def test_a_schedule_fires_once_however_many_orchestrators_run(
    task_agent, make_orchestrator
) -> None:
    orchestrators = [await make_orchestrator(task_agent) for _ in range(2)]
    async with channel_to(orchestrators[0].server.port, "orchestrator") as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        nightly = {**_chain("nightly", 1), "schedule": "30 2 * * *"}
        await register(stub, nightly)
        for orchestrator in orchestrators:
            await orchestrator.refresh_definitions()
        due = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
        await asyncio.gather(*(o.fire_schedules(due) for o in orchestrators))
        await asyncio.gather(*(o.fire_schedules(due + timedelta(minutes=1)) for o in orchestrators))
        runs = (await stub.ListRuns(W.ListRunsRequest(workflow="nightly"))).runs
    assert len(runs) == 1
    assert json.loads(runs[0].input) == {"scheduled_at": due.isoformat()}


async def test_an_event_starts_the_workflows_it_triggers(task_agent, make_orchestrator) -> None:
    orchestrator = await make_orchestrator(task_agent)
    async with (
        channel_to(orchestrator.server.port, "orchestrator") as channel,
        channel_to(task_agent.server.port) as tasks_channel,
    ):
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        notify = {
            "name": "notify-ops",
            "triggers": ["task.dead_lettered"],
            "steps": [
                {"name": "page", "type": "echo", "input": {"what": {"$ref": "input.event.data"}}}
            ],
        }
        await register(stub, notify)
        await orchestrator.refresh_definitions()
        failing = S.TaskSpec(
            type="fail", payload=json.dumps({"times": 1, "retryable": False}).encode()
        )
        task = (
            await tasks_pb2_grpc.TaskServiceStub(tasks_channel).SubmitTask(
                S.SubmitTaskRequest(task=failing)
            )
        ).task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (runs := (await stub.ListRuns(W.ListRunsRequest(workflow="notify-ops"))).runs):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        run = await until_ended(stub, runs[0].id)
    assert run.state == W.RUN_STATE_SUCCEEDED
    assert json.loads(run.steps[0].output)["what"]["id"] == task.id
