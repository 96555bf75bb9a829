"""A chain's next steps start in the task agent, as continuations of the task before them,
while the orchestrator stays the source of truth: they run with the orchestrator down, and
the run then completes from the events, each step run once; a run that ended before it
heard of them cancels what was started ahead of it."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

from agentry.tasks.v1 import tasks_pb2
from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from libs.common.task_ids import task_id_for
from services.task_agent.app import TaskAgentApp
from tests.integration.task_client import stub_for, terminal, until, until_exists
from tests.integration.workflow_client import register, start, until_ended
from tests.secure import channel_to

CHAIN = {
    "name": "chain",
    "steps": [
        {"name": "nap", "type": "sleep", "input": {"seconds": {"$ref": "input.nap"}}},
        {"name": "two", "type": "echo", "depends_on": ["nap"],
         "input": {"slept": {"$ref": "steps.nap.output.slept_s"}, "user": {"$ref": "input.user"}}},
        {"name": "three", "type": "echo", "depends_on": ["two"],
         "input": {"got": {"$ref": "steps.two.output"}}},
    ],
}  # fmt: skip
# A value that looks like a reference is data: it is copied, not followed.
USER = {"id": 7, "$ref": "input.nap"}


def _task_id(run_id: str, step: str) -> str:
    return str(task_id_for(f"run:{run_id}:{step}:0:1"))  # item 0, the run's first attempt


def _running(task: tasks_pb2.Task) -> bool:
    return task.state == tasks_pb2.TASK_STATE_RUNNING


async def _stop_while_running(orchestrator, tasks, task_id: str) -> None:
    """Stops the orchestrator while the task runs: it cannot have heard the task end."""
    await until(tasks, task_id, _running)
    await orchestrator.stop()
    task = (await tasks.GetTask(tasks_pb2.GetTaskRequest(task_id=task_id))).task
    assert _running(task), "the task ended before its orchestrator stopped: make it longer"


async def test_a_chain_runs_on_in_the_task_agent_while_its_orchestrator_is_down(
    make_task_agent, make_orchestrator
) -> None:
    agent = await make_task_agent()
    # No reconciler within the test: the run completes from the events alone.
    first = await make_orchestrator(agent, stale_run_s=600)
    async with channel_to(first.server.port, "orchestrator") as channel:
        workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(workflows, CHAIN)
        run_id = (await start(workflows, "chain", {"nap": 1.5, "user": USER})).run.id
    async with stub_for(agent) as tasks:
        await _stop_while_running(first, tasks, _task_id(run_id, "nap"))
        last = await until_exists(tasks, _task_id(run_id, "three"), terminal)
        assert last.state == tasks_pb2.TASK_STATE_SUCCEEDED
        expected = {"got": {"slept": 1.5, "user": USER}}
        assert json.loads(last.result) == expected

        second = await make_orchestrator(agent, stale_run_s=600)
        async with channel_to(second.server.port, "orchestrator") as channel:
            workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
            run = await until_ended(workflows, run_id)
        listed = (await tasks.ListTasks(tasks_pb2.ListTasksRequest())).tasks

    assert run.state == W.RUN_STATE_SUCCEEDED, run.error
    assert json.loads(run.output) == {"three": expected}
    steps = {s.name: s for s in run.steps}
    for name in ("nap", "two", "three"):
        assert steps[name].state == W.STEP_STATE_SUCCEEDED
        assert list(steps[name].task_ids) == [_task_id(run_id, name)]
    assert sorted(task.labels["step"] for task in listed) == ["nap", "three", "two"]
    assert all(task.attempts == 1 for task in listed)


def _nap_then_long(**workflow: object) -> dict:
    return {
        "name": "slow",
        **workflow,
        "steps": [
            {"name": "nap", "type": "sleep", "input": {"seconds": 1.5}},
            {"name": "long", "type": "sleep", "depends_on": ["nap"], "input": {"seconds": 60}},
        ],
    }


async def _long_started_ahead(
    make_task_agent, make_orchestrator, definition: dict
) -> tuple[TaskAgentApp, W.Run]:
    """Starts a run of `definition` (`nap`, then `long`), stops its orchestrator while `nap`
    runs, and waits for the agent to start `long` on its own."""
    agent = await make_task_agent(lease_s=1.0)  # a cancel stops a running task within 1/3 s
    first = await make_orchestrator(agent, stale_run_s=600)
    async with channel_to(first.server.port, "orchestrator") as channel:
        workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(workflows, definition)
        run = (await start(workflows, "slow", {})).run
    async with stub_for(agent) as tasks:
        await _stop_while_running(first, tasks, _task_id(run.id, "nap"))
        await until_exists(tasks, _task_id(run.id, "long"), _running)
    return agent, run


async def test_a_run_that_timed_out_cancels_the_step_started_ahead_of_it(
    make_task_agent, make_orchestrator
) -> None:
    """The agent starts `long` while the orchestrator is down, and the run's deadline passes
    before the orchestrator hears that `nap` ended: the run fails, and `long` is
    cancelled."""
    definition = _nap_then_long(timeout_s=2)
    agent, started = await _long_started_ahead(make_task_agent, make_orchestrator, definition)
    # The deadline is a time on the clock, not an event: wait until it has passed.
    deadline = started.created_at.ToDatetime(tzinfo=UTC) + timedelta(seconds=2.1)
    await asyncio.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()))

    second = await make_orchestrator(agent, stale_run_s=600, reconcile_interval_s=0.2)
    async with channel_to(second.server.port, "orchestrator") as channel:
        run = await until_ended(workflows_pb2_grpc.WorkflowServiceStub(channel), started.id)
    async with stub_for(agent) as tasks:
        long = await until(tasks, _task_id(run.id, "long"), terminal)
    assert run.state == W.RUN_STATE_FAILED
    assert "timed out" in run.error
    assert long.state == tasks_pb2.TASK_STATE_CANCELLED


async def test_a_run_cancelled_before_its_orchestrator_heard_of_a_step_cancels_it(
    make_task_agent, make_orchestrator, redis_prefix
) -> None:
    """The run is cancelled through an orchestrator that does not read this agent's events
    (another Redis prefix), after `nap` ended and the agent started `long`: the
    orchestrator that then hears `nap` ended cancels `long`."""
    agent, run = await _long_started_ahead(make_task_agent, make_orchestrator, _nap_then_long())
    deaf = await make_orchestrator(agent, redis_prefix=f"{redis_prefix}-other")
    async with channel_to(deaf.server.port, "orchestrator") as channel:
        workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await workflows.CancelRun(W.CancelRunRequest(run_id=run.id))
    await deaf.stop()
    async with stub_for(agent) as tasks:
        long_id = _task_id(run.id, "long")
        still = (await tasks.GetTask(tasks_pb2.GetTaskRequest(task_id=long_id))).task
        assert still.state == tasks_pb2.TASK_STATE_RUNNING

        await make_orchestrator(agent, stale_run_s=600)
        long = await until(tasks, long_id, terminal)
    assert long.state == tasks_pb2.TASK_STATE_CANCELLED
