"""Dispatch over Redis: one stream per queue read by the task agents' consumer group, and a
sorted set per queue holding delayed work until it is due. Postgres stays the truth: a
message is only a hint to claim a task there."""

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as redis
from redis.exceptions import ResponseError

from libs.common.redis_client import Keys

GROUP = "task-agents"
_FIELD = b"t"

# Moves due members of the delayed set onto the stream, atomically; both keys share the
# queue's hash tag.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 't', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""


@dataclass(frozen=True)
class Message:
    queue: str
    message_id: bytes
    task_id: uuid.UUID | None


class Dispatcher:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._promote = client.register_script(_PROMOTE)

    def _delayed(self, queue: str) -> str:
        return f"{self._keys.prefix}:{{q:{queue}}}:delayed"

    async def dispatch(self, due: Iterable[tuple[uuid.UUID, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id, queue in due:
                pipe.xadd(self._keys.queue_stream(queue), {_FIELD: task_id.hex})
            await pipe.execute()

    async def schedule(self, later: Iterable[tuple[uuid.UUID, str, datetime]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id, queue, run_at in later:
                pipe.zadd(self._delayed(queue), {task_id.hex: run_at.timestamp()})
            await pipe.execute()

    async def promote_due(self, queues: Sequence[str], limit: int = 1000) -> int:
        now = time.time()
        moved = 0
        for queue in queues:
            moved += await self._promote(
                keys=[self._delayed(queue), self._keys.queue_stream(queue)], args=[now, limit]
            )
        return moved

    async def next_due_in(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest delayed task of these queues is due."""
        earliest = None
        for queue in queues:
            first = await self._redis.zrange(self._delayed(queue), 0, 0, withscores=True)
            if first and (earliest is None or first[0][1] < earliest):
                earliest = first[0][1]
        return None if earliest is None else max(0.0, earliest - time.time())

    async def ensure_groups(self, queues: Sequence[str]) -> None:
        for queue in queues:
            try:
                await self._redis.xgroup_create(
                    self._keys.queue_stream(queue), GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self, queues: Sequence[str], consumer: str, count: int, block_ms: int
    ) -> list[Message]:
        """At most `count` new messages: a free slot asks for one, never more (no blind
        prefetch parks short tasks behind long ones)."""
        streams = {self._keys.queue_stream(q): ">" for q in queues}
        try:
            reply = await self._redis.xreadgroup(
                GROUP, consumer, streams, count=count, block=block_ms
            )
        except ResponseError as exc:
            # NOGROUP: the stream or group is gone; UNBLOCKED: it went while this read waited
            # on it (Redis 7 answers a blocked XREADGROUP so when its stream is deleted).
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            # Redis lost its data: the groups come back, Postgres re-dispatches.
            await self.ensure_groups(queues)
            return []
        queue_of = {self._keys.queue_stream(q).encode(): q for q in queues}
        return [
            Message(queue_of[stream], message_id, _task_id(fields))
            for stream, messages in reply or []
            for message_id, fields in messages
        ]

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for msg in messages:
                stream = self._keys.queue_stream(msg.queue)
                pipe.xack(stream, GROUP, msg.message_id)
                pipe.xdel(stream, msg.message_id)
            await pipe.execute()


def _task_id(fields: dict[bytes, bytes]) -> uuid.UUID | None:
    try:
        return uuid.UUID(fields[_FIELD].decode())
    except (KeyError, ValueError):
        return None
