"""Redis through redis.asyncio, and the key layout. Keys one script or pipeline touches
together share a hash tag, so the same code runs on a Redis Cluster."""

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def create_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=5,
        retry=Retry(EqualJitterBackoff(cap=1.0, base=0.01), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class Keys:
    """Every key Agentry writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def queue_stream(self, queue: str, priority: int) -> str:
        return f"{self.prefix}:{{q:{queue}}}:p{priority}"

    def delayed(self, queue: str) -> str:
        return f"{self.prefix}:{{q:{queue}}}:delayed"

    def rate_bucket(self, name: str) -> str:
        return f"{self.prefix}:{{rate:{name}}}"

    def slot_holders(self, key: str) -> str:
        return f"{self.prefix}:{{slots:{key}}}"

    def event_stream(self) -> str:
        return f"{self.prefix}:{{events}}:stream"

    def event_channel(self) -> str:
        return f"{self.prefix}:events"

    def task_cache(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"


async def create_group(client: redis.Redis, stream: str, group: str) -> None:
    """The consumer group `group` on `stream` (and the stream), unless it exists."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
