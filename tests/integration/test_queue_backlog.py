"""The backlog a queue reports (what autoscalers scale task agents on), read from the real
Redis: waiting messages and due delayed tasks count, delivered and future ones do not, and
the age is the oldest waiting one's."""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as redis

from libs.common.redis_client import Keys
from services.task_agent.dispatch import Dispatcher
from services.task_agent.model import Priority


@dataclass(frozen=True)
class _Due:
    id: uuid.UUID
    queue: str
    priority: Priority
    run_at: datetime


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def dispatcher(client: redis.Redis, redis_prefix: str) -> Dispatcher:
    return Dispatcher(client, Keys(redis_prefix))


def _task(queue: str, run_at: datetime, priority: Priority = Priority.NORMAL) -> _Due:
    return _Due(uuid.uuid4(), queue, priority, run_at)


async def test_an_empty_queue_has_no_backlog(dispatcher: Dispatcher) -> None:
    await dispatcher.ensure_groups(["mail"])
    assert await dispatcher.backlog(["mail"]) == [("mail", 0, 0.0)]


async def test_waiting_and_due_tasks_count_delivered_and_future_ones_do_not(
    dispatcher: Dispatcher, client: redis.Redis, redis_prefix: str
) -> None:
    await dispatcher.ensure_groups(["mail", "media"])
    now = datetime.now(UTC)
    await dispatcher.send(
        [
            _task("mail", now - timedelta(seconds=1)),
            _task("mail", now, Priority.HIGH),
            _task("mail", now, Priority.LOW),
            _task("mail", now + timedelta(hours=1)),  # delayed, not due: not waiting
            _task("media", now),
        ]
    )
    # One message of `mail` is delivered to an agent: it is no longer waiting.
    [taken] = await dispatcher.read(["mail"], "agent-1", 1, block_ms=0)
    assert taken.priority == Priority.HIGH
    # A retry that became due a few seconds ago and still waits in the delayed set (the
    # promoter has not moved it yet).
    delayed = Keys(redis_prefix).delayed("mail")
    await client.zadd(delayed, {f"{uuid.uuid4().hex}:2": time.time() - 3})

    backlog = {
        queue: (depth, age) for queue, depth, age in await dispatcher.backlog(["mail", "media"])
    }

    assert backlog["mail"][0] == 3  # two on the streams, one due in the delayed set
    assert 3.0 <= backlog["mail"][1] < 30.0  # the overdue retry is the oldest
    assert backlog["media"][0] == 1
    assert 0.0 <= backlog["media"][1] < 30.0
