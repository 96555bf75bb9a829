"""Eager execution: a task submitted to an agent with idle slots that serves its type and
queue starts there at once, claimed as it is stored."""

from agentry.tasks.v1 import tasks_pb2
from tests.integration.task_client import stub_for, submit, terminal, until

S = tasks_pb2


async def test_an_idle_agent_runs_what_is_submitted_to_it_at_once(make_task_agent) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        task = await submit(stub, "echo", {"n": 1})
        done = await until(stub, task.id, terminal)

    assert task.state == S.TASK_STATE_RUNNING
    assert task.agent == agent.agent_id
    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 1


async def test_work_for_other_queues_or_later_is_dispatched_not_taken(make_task_agent) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        elsewhere = await submit(stub, "echo", 1, queue="gpu")
        later = await submit(stub, "echo", 2, delay_s=0.3)
        done = await until(stub, later.id, terminal)

    assert elsewhere.state == S.TASK_STATE_QUEUED
    assert later.state == S.TASK_STATE_QUEUED
    assert done.state == S.TASK_STATE_SUCCEEDED


async def test_without_eager_execution_every_task_goes_through_the_queue(make_task_agent) -> None:
    agent = await make_task_agent(eager_execution=False)
    async with stub_for(agent) as stub:
        task = await submit(stub, "echo", 3)
        done = await until(stub, task.id, terminal)

    assert task.state == S.TASK_STATE_QUEUED
    assert done.state == S.TASK_STATE_SUCCEEDED
