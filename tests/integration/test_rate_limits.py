"""The shared token buckets against real Redis: every replica (here, a RateLimiter on a
client of its own) draws from the same bucket, and a penalty stops all of them. Waits are
Redis's answers; tests poll `acquire` under a deadline rather than sleep blindly."""

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from libs.common.redis_client import Keys, create_redis
from services.task_agent.limits import RateLimiter

Replica = Callable[[], RateLimiter]


@pytest.fixture
async def replica(redis_url: str, redis_prefix: str) -> AsyncIterator[Replica]:
    """Makes RateLimiters as separate replicas would have them: each on its own client."""
    clients: list[redis.Redis] = []

    def make() -> RateLimiter:
        client = create_redis(redis_url)
        clients.append(client)
        return RateLimiter(client, Keys(redis_prefix))

    yield make
    for client in clients:
        await client.aclose()


async def _seconds_until_admitted(limiter: RateLimiter, name: str, rate: float) -> float:
    """How long `acquire` kept refusing, polled until it admits (at most 5 s)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        while True:
            if await limiter.acquire(name, rate) == 0:
                break
            await asyncio.sleep(0.02)
    return loop.time() - started


async def test_a_bucket_admits_its_burst_then_says_how_long_to_wait(replica: Replica) -> None:
    limiter = replica()

    admitted = [await limiter.acquire("api", rate_per_s=2, burst=3) for _ in range(3)]
    refused = await limiter.acquire("api", rate_per_s=2, burst=3)

    assert admitted == [0.0, 0.0, 0.0]
    # One token comes back every half second.
    assert 0 < refused <= 0.5


async def test_buckets_are_separate_by_name(replica: Replica) -> None:
    limiter = replica()

    assert await limiter.acquire("host:a", rate_per_s=1) == 0.0
    assert await limiter.acquire("host:a", rate_per_s=1) > 0
    assert await limiter.acquire("host:b", rate_per_s=1) == 0.0


async def test_two_replicas_draw_from_one_bucket(replica: Replica) -> None:
    first, second = replica(), replica()

    assert await first.acquire("api", rate_per_s=1, burst=2) == 0.0
    assert await second.acquire("api", rate_per_s=1, burst=2) == 0.0
    first_refused = await first.acquire("api", rate_per_s=1, burst=2)
    second_refused = await second.acquire("api", rate_per_s=1, burst=2)

    assert 0 < first_refused <= 1.0
    assert 0 < second_refused <= 1.0


async def test_a_penalty_stops_every_replica_for_its_duration(replica: Replica) -> None:
    first, second = replica(), replica()
    assert await second.acquire("api", rate_per_s=100) == 0.0, "a full bucket before"

    await first.penalize("api", 1.0)

    first_wait = await first.acquire("api", rate_per_s=100)
    second_wait = await second.acquire("api", rate_per_s=100)
    assert 0.8 < first_wait <= 1.0
    assert 0.8 < second_wait <= 1.0
    blocked_for = await _seconds_until_admitted(second, "api", rate=100)
    assert blocked_for >= 0.8


async def test_a_shorter_penalty_does_not_shorten_a_longer_one(replica: Replica) -> None:
    limiter = replica()

    await limiter.penalize("api", 30)
    await limiter.penalize("api", 1)

    assert await limiter.acquire("api", rate_per_s=100) > 25


async def test_a_rate_of_n_per_second_admits_about_n_per_second_across_replicas(
    replica: Replica,
) -> None:
    rate, window = 10.0, 1.5
    loop = asyncio.get_running_loop()
    end = loop.time() + window

    async def take(limiter: RateLimiter) -> int:
        admitted = 0
        while loop.time() < end:
            wait = await limiter.acquire("api", rate_per_s=rate, burst=1)
            if wait == 0:
                admitted += 1
            else:
                await asyncio.sleep(min(wait, max(0.0, end - loop.time())))
        return admitted

    counts = await asyncio.gather(take(replica()), take(replica()))

    # One token to start with, then ten a second: 16 in 1.5 s, shared by both replicas.
    # Redis's clock bounds the top; a slow machine can only admit fewer.
    assert 11 <= sum(counts) <= 17
    assert all(c > 0 for c in counts)
