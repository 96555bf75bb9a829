"""What survives failure: fenced late results, agents that die holding work, Redis losing
its data, agents that stop (drain and hand back), and health as an orchestrator sees it."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.crypto import Keyring
from libs.common.db import create_engine
from services.task_agent.app import TaskAgentApp
from services.task_agent.store import TaskStore
from tests.integration.task_client import in_state, spec, submit, terminal, until
from tests.secure import channel_to, dev_secrets

S = tasks_pb2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def _channel_to(app: TaskAgentApp) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_to(app.server.port) as channel:
        yield channel


@pytest.fixture
async def other_store(clean_db: str) -> AsyncIterator[TaskStore]:
    """Postgres as another agent process sees it: its own engine on the same database."""
    engine = create_engine(clean_db)
    yield TaskStore(engine, Keyring.from_file(dev_secrets().data_keys))
    await engine.dispose()


async def _lose_redis_data(redis_url: str, prefix: str) -> list[bytes]:
    """Deletes every key of this test (FLUSHALL is not ours to run on a shared Redis)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    return keys


# Fencing and dead agents


async def test_a_result_from_an_agent_whose_lease_expired_is_refused(make_task_agent) -> None:
    # Its queue is served by no agent, so only the claims made here ever hold the task. They
    # announce what they did, as the agents they stand for would.
    agent = await make_task_agent()
    store = agent.store
    async with _channel_to(agent) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        task = await submit(stub, "echo", "payload", queue="served-by-nobody")
        [held] = await store.claim([uuid.UUID(task.id)], "task_agent/a", lease_s=0.2)
        assert held.attempts == 1

        expired = await until(stub, task.id, in_state(S.TASK_STATE_RETRYING))
        assert expired.error.kind == "lease_expired"
        [taken] = await store.claim([uuid.UUID(task.id)], "task_agent/b", lease_s=30)
        assert taken.attempts == 2
        await agent.changes.announce([taken])

        assert await store.succeed([(held.id, 1, b'"late"')]) == ([], [])
        now = datetime.now(UTC)
        assert await store.retry(held.id, 1, now, "late", "late failure") is None
        assert await store.fail(held.id, 1, "non_retryable", "late", "late failure", None) is None
        current = (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
        assert current.state == S.TASK_STATE_RUNNING
        assert current.agent == "task_agent/b"
        assert current.result == b""

        [recorded], _ = await store.succeed([(held.id, 2, b'"on time"')])
        assert recorded.result == b'"on time"'
        await agent.changes.announce([recorded])
        done = (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
        assert done.state == S.TASK_STATE_SUCCEEDED
        assert json.loads(done.result) == "on time"


async def test_a_task_held_by_a_dead_agent_is_finished_by_a_live_one(
    make_task_agent, other_store: TaskStore
) -> None:
    # One slot, busy with a short sleep, so the next task waits on its stream long enough for
    # the "dead" agent to claim it through Postgres, then never renew its lease.
    live = await make_task_agent(concurrency=1)
    async with _channel_to(live) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        busy = await submit(stub, "sleep", {"seconds": 0.5})
        await until(stub, busy.id, in_state(S.TASK_STATE_RUNNING))
        task = await submit(stub, "echo", {"job": 7})
        [held] = await other_store.claim([uuid.UUID(task.id)], "task_agent/dead", lease_s=0.3)
        assert held.attempts == 1

        done = await until(stub, task.id, terminal)

        assert done.state == S.TASK_STATE_SUCCEEDED
        assert done.attempts == 2
        assert done.agent == live.agent_id
        assert json.loads(done.result) == {"job": 7}


# Redis losing its data


async def test_queued_tasks_lost_with_redis_are_dispatched_again_from_postgres(
    make_task_agent, redis_url: str, redis_prefix: str
) -> None:
    # One slot, busy, so the tasks are still on their stream when Redis loses it.
    agent = await make_task_agent(concurrency=1, redispatch_after_s=0.5)
    async with _channel_to(agent) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        busy = await submit(stub, "sleep", {"seconds": 0.3})
        await until(stub, busy.id, in_state(S.TASK_STATE_RUNNING))
        batch = [spec("echo", n) for n in range(4)]
        tasks = (await stub.SubmitTasks(S.SubmitTasksRequest(tasks=batch))).tasks

        lost = await _lose_redis_data(redis_url, redis_prefix)

        assert f"{redis_prefix}:{{q:default}}:p2".encode() in lost
        for task in [busy, *tasks]:
            done = await until(stub, task.id, terminal)
            assert done.state == S.TASK_STATE_SUCCEEDED
            assert done.attempts == 1
        assert [json.loads(t.result) for t in await _results(stub, tasks)] == list(range(4))


async def test_delayed_tasks_lost_with_redis_are_dispatched_again_from_postgres(
    make_task_agent, redis_url: str, redis_prefix: str
) -> None:
    # The agent is idle, blocked reading its stream, when Redis loses everything.
    agent = await make_task_agent(redispatch_after_s=0.5)
    async with _channel_to(agent) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        batch = [spec("echo", n, delay_s=0.3) for n in range(3)]
        tasks = (await stub.SubmitTasks(S.SubmitTasksRequest(tasks=batch))).tasks

        lost = await _lose_redis_data(redis_url, redis_prefix)

        assert f"{redis_prefix}:{{q:default}}:delayed".encode() in lost
        for task in tasks:
            done = await until(stub, task.id, terminal)
            assert done.state == S.TASK_STATE_SUCCEEDED
            assert done.attempts == 1


# Stopping


async def test_stopping_lets_a_task_finish_within_the_grace_period(make_task_agent) -> None:
    first = await make_task_agent(shutdown_grace_s=2.0)
    async with _channel_to(first) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        task = await submit(stub, "sleep", {"seconds": 0.3})
        await until(stub, task.id, in_state(S.TASK_STATE_RUNNING))

    await first.stop()

    second = await make_task_agent()
    async with _channel_to(second) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        done = (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 1
    assert done.agent == first.agent_id
    assert json.loads(done.result) == {"slept_s": 0.3}


async def test_stopping_hands_back_a_task_that_outlasts_the_grace_period(make_task_agent) -> None:
    first = await make_task_agent(shutdown_grace_s=0.3)
    async with _channel_to(first) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        task = await submit(stub, "sleep", {"seconds": 30})
        await until(stub, task.id, in_state(S.TASK_STATE_RUNNING))

    await first.stop()

    second = await make_task_agent(shutdown_grace_s=0.1)
    async with _channel_to(second) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        again = await until(stub, task.id, lambda t: t.attempts == 2)
    assert again.state == S.TASK_STATE_RUNNING
    assert again.agent == second.agent_id
    assert again.error.kind == "handed_back"


# Health


async def test_health_is_serving_while_running_and_not_serving_once_stopping(
    make_task_agent,
) -> None:
    agent = await make_task_agent(shutdown_grace_s=2.0)
    services = ["", tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name]
    async with _channel_to(agent) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = tasks_pb2_grpc.TaskServiceStub(channel)

        for service in services:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == SERVING, service

        # Something to drain, so the server still answers while the agent stops.
        task = await submit(stub, "sleep", {"seconds": 0.5})
        await until(stub, task.id, in_state(S.TASK_STATE_RUNNING))
        stopping = asyncio.create_task(agent.stop())
        answers = await _health_once_changed(health, services, SERVING)
        still_draining = not stopping.done()
        await stopping

    assert answers == [NOT_SERVING, NOT_SERVING]
    assert still_draining


async def _health_once_changed(
    health: health_pb2_grpc.HealthStub, services: list[str], was: int, within: float = 2.0
) -> list[int]:
    """Every service's status once the first has left `was`, polled under a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answers = [
            (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
            for service in services
        ]
        if answers[0] != was or loop.time() > deadline:
            return answers
        await asyncio.sleep(0.02)


async def _results(stub, tasks: list[tasks_pb2.Task]) -> list[tasks_pb2.Task]:
    return [(await stub.GetTask(S.GetTaskRequest(task_id=t.id))).task for t in tasks]
