"""Priorities, and limits every replica shares: a task type's rate limit and its concurrency
limit per key. Two agents serve the same types, as two replicas would."""

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.integration.task_client import in_state, until
from tests.secure import channel_to

S = tasks_pb2
MODULES = ["services.task_agent.builtins", "tests.integration.handlers_for_tests"]


@pytest.fixture
async def replicas(make_task_agent) -> AsyncIterator[tasks_pb2_grpc.TaskServiceStub]:
    first = await make_task_agent(handler_modules=MODULES, concurrency=20)
    await make_task_agent(handler_modules=MODULES, concurrency=20)
    async with channel_to(first.server.port) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)


async def _submit_all(stub, specs: list[tasks_pb2.TaskSpec]) -> list[str]:
    reply = await stub.SubmitTasks(S.SubmitTasksRequest(tasks=specs))
    return [t.id for t in reply.tasks]


async def _results(stub, ids: list[str], within: float = 15.0) -> list[tasks_pb2.Task]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    done: dict[str, tasks_pb2.Task] = {}
    while len(done) < len(ids):
        for task_id in ids:
            if task_id not in done:
                task = (await stub.GetTask(S.GetTaskRequest(task_id=task_id))).task
                if task.state == S.TASK_STATE_SUCCEEDED:
                    done[task_id] = task
        assert loop.time() < deadline, f"{len(ids) - len(done)} tasks not done in {within}s"
        await asyncio.sleep(0.05)
    return [done[i] for i in ids]


async def test_a_rate_limit_holds_across_replicas_without_spending_attempts(replicas) -> None:
    ids = await _submit_all(replicas, [S.TaskSpec(type="limited.rate") for _ in range(12)])

    done = await _results(replicas, ids)

    starts = sorted(json.loads(t.result)["started"] for t in done)
    # 4/s with a burst of 4: the last of 12 gets its token (12 - 4) / 4 = 2 s after the first
    # one, whichever replica ran it (less the time the first took to start once it had it).
    assert starts[-1] - starts[0] >= 1.7
    for window_start in starts:
        in_window = [s for s in starts if window_start <= s < window_start + 1.0]
        assert len(in_window) <= 4 + 4  # the burst plus one second's tokens
    assert all(t.attempts == 1 for t in done)


async def test_a_concurrency_key_never_runs_more_than_its_limit_at_once(replicas) -> None:
    specs = [
        S.TaskSpec(type="limited.slots", payload=b'{"seconds": 0.2}', concurrency_key="user-1")
        for _ in range(6)
    ] + [
        S.TaskSpec(type="limited.slots", payload=b'{"seconds": 0.2}', concurrency_key="user-2")
        for _ in range(2)
    ]
    ids = await _submit_all(replicas, specs)

    done = await _results(replicas, ids)

    spans = [json.loads(t.result) for t in done[:6]]
    for span in spans:
        overlapping = [
            o for o in spans if o["started"] < span["ended"] and span["started"] < o["ended"]
        ]
        assert len(overlapping) <= 2  # itself and at most one other
    other_key = [json.loads(t.result) for t in done[6:]]
    # Another key is not held back by the first one's limit.
    assert other_key[0]["started"] < max(s["ended"] for s in spans)
    assert all(t.attempts == 1 for t in done)


async def test_higher_priorities_start_first(make_task_agent) -> None:
    agent = await make_task_agent(concurrency=1, low_priority_first_every=1000)
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        busy = await stub.SubmitTask(
            S.SubmitTaskRequest(task=S.TaskSpec(type="sleep", payload=b'{"seconds": 0.5}'))
        )
        await until(stub, busy.task.id, in_state(S.TASK_STATE_RUNNING))
        order = [S.PRIORITY_LOW] * 3 + [S.PRIORITY_NORMAL] * 3 + [S.PRIORITY_HIGH] * 3
        ids = await _submit_all(stub, [S.TaskSpec(type="echo", priority=p) for p in order])

        done = await _results(stub, ids)

    started = sorted(done, key=lambda t: t.started_at.ToDatetime())
    assert [t.priority for t in started] == sorted(order, reverse=True)


async def test_low_priority_runs_while_high_priority_keeps_coming(make_task_agent) -> None:
    agent = await make_task_agent(concurrency=1, low_priority_first_every=10)
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        busy = await stub.SubmitTask(
            S.SubmitTaskRequest(task=S.TaskSpec(type="sleep", payload=b'{"seconds": 0.3}'))
        )
        await until(stub, busy.task.id, in_state(S.TASK_STATE_RUNNING))
        specs = [S.TaskSpec(type="echo", priority=S.PRIORITY_LOW)] + [
            S.TaskSpec(type="echo", priority=S.PRIORITY_HIGH) for _ in range(40)
        ]
        ids = await _submit_all(stub, specs)

        done = await _results(stub, ids)

    started = sorted(done, key=lambda t: t.started_at.ToDatetime())
    low_position = [t.id for t in started].index(ids[0])
    assert low_position <= 10  # one read in ten takes low priority first


async def test_a_plain_function_runs_in_a_thread(make_task_agent) -> None:
    agent = await make_task_agent(handler_modules=MODULES, lease_s=0.6)
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        quick = await stub.SubmitTask(
            S.SubmitTaskRequest(
                task=S.TaskSpec(type="blocking.sleep", payload=b'{"seconds": 0.05}')
            )
        )
        [done] = await _results(stub, [quick.task.id])
        assert json.loads(done.result) == {"slept": True}


async def test_a_cpu_heavy_handler_runs_in_another_process(make_task_agent) -> None:
    import os

    agent = await make_task_agent(handler_modules=MODULES)
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        submitted = await stub.SubmitTask(
            S.SubmitTaskRequest(task=S.TaskSpec(type="cpu.sum_squares", payload=b'{"n": 1000}'))
        )
        [done] = await _results(stub, [submitted.task.id], within=30)

    result = json.loads(done.result)
    assert result["sum"] == sum(i * i for i in range(1000))
    assert result["pid"] != os.getpid()


async def test_a_blocking_handler_is_cancelled_through_its_context(make_task_agent) -> None:
    agent = await make_task_agent(handler_modules=MODULES, lease_s=0.6)
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        submitted = await stub.SubmitTask(
            S.SubmitTaskRequest(task=S.TaskSpec(type="blocking.sleep", payload=b'{"seconds": 30}'))
        )
        task_id = submitted.task.id
        await until(stub, task_id, in_state(S.TASK_STATE_RUNNING))

        await stub.CancelTask(S.CancelTaskRequest(task_id=task_id))

        await until(stub, task_id, in_state(S.TASK_STATE_CANCELLED))
