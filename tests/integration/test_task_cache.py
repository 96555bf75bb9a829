"""The cache layer: reads of a task's state are served from Redis, kept coherent by every
change, and never go back to an older state."""

import dataclasses
import uuid

import redis.asyncio as redis

from agentry.tasks.v1 import tasks_pb2
from libs.common.redis_client import Keys
from services.task_agent.cache import TaskCache
from tests.integration.task_client import stub_for, submit, terminal, until

S = tasks_pb2


async def test_a_finished_task_is_read_from_the_cache(make_task_agent, redis_url, redis_prefix):
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        task = await submit(stub, "echo", {"n": 1})
        await until(stub, task.id, terminal)
        client = redis.Redis.from_url(redis_url)
        raw = await client.get(Keys(redis_prefix).task_cache(task.id))
        await client.aclose()

        assert raw is not None and b'"state":"SUCCEEDED"' in raw
        assert (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task.state == (
            S.TASK_STATE_SUCCEEDED
        )


async def test_every_change_reaches_the_cache(make_task_agent) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        retry = S.RetryPolicy(max_attempts=3, initial_backoff_s=1.0, max_backoff_s=1.0)
        # Delayed, so the watch is in place before the first attempt fails however busy
        # the machine is; WatchTask reads through the cache: it sees the retry, then the
        # success.
        task = await submit(stub, "fail", {"times": 1}, retry=retry, delay_s=0.5)
        seen = [u.task.state async for u in stub.WatchTask(S.WatchTaskRequest(task_id=task.id))]

    assert S.TASK_STATE_RETRYING in seen
    assert seen.index(S.TASK_STATE_RETRYING) < seen.index(S.TASK_STATE_SUCCEEDED)
    cached = await agent.changes.cache.get(uuid.UUID(task.id))
    assert cached == await agent.store.get(uuid.UUID(task.id))


async def test_an_older_state_never_overwrites_a_newer_one(
    make_task_agent, redis_url, redis_prefix
) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        done = await until(stub, (await submit(stub, "echo", 1)).id, terminal)
    newest = await agent.store.get(uuid.UUID(done.id))
    assert newest is not None
    client = redis.Redis.from_url(redis_url)
    cache = TaskCache(client, Keys(redis_prefix), ttl_s=60, keyring=agent.keyring)
    older = dataclasses.replace(newest, state=newest.state.QUEUED, version=newest.version - 1)

    await cache.put([older])

    assert await cache.get(newest.id) == newest
    await client.aclose()


async def test_a_cache_miss_reads_postgres(make_task_agent) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as stub:
        task = await until(stub, (await submit(stub, "echo", [1, 2])).id, terminal)
        await agent.changes.cache.forget(uuid.UUID(task.id))

        again = (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task

    assert again == task


async def test_the_cache_is_written_after_redis_forgets_its_scripts(
    make_task_agent, redis_url, redis_prefix
) -> None:
    """Cache writes name their script by digest; a Redis that lost its scripts (restarted,
    or flushed) still gets every change."""
    agent = await make_task_agent()
    client = redis.Redis.from_url(redis_url)
    async with stub_for(agent) as stub:
        await client.script_flush()
        task = await until(stub, (await submit(stub, "echo", {"n": 2})).id, terminal)
        raw = await client.get(Keys(redis_prefix).task_cache(task.id))
    await client.aclose()

    assert raw is not None and b'"state":"SUCCEEDED"' in raw
