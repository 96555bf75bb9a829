"""Dispatch over Redis: per queue, one stream per priority read by the task agents' consumer
group, and a sorted set holding delayed work until it is due. Postgres stays the truth: a
message is only a hint to claim a task there."""

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import ResponseError

from libs.common.redis_client import Keys, create_group
from services.task_agent.model import Priority

GROUP = "task-agents"
_FIELD = b"t"
_HIGH_FIRST = (Priority.HIGH, Priority.NORMAL, Priority.LOW)

# Moves due members ("<task id hex>:<priority>") of the delayed set onto the stream of
# their priority, atomically. KEYS: the delayed set, then the streams of priority 1, 2, 3;
# all share the queue's hash tag.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local sep = string.find(member, ':', 1, true)
  local priority = tonumber(string.sub(member, sep + 1))
  redis.call('XADD', KEYS[1 + priority], '*', 't', string.sub(member, 1, sep - 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class Dispatchable(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def run_at(self) -> datetime: ...


@dataclass(frozen=True)
class Message:
    stream: str
    message_id: bytes
    task_id: uuid.UUID | None

    @property
    def priority(self) -> int:
        return int(self.stream.rsplit(":p", 1)[1])


class Dispatcher:
    def __init__(self, client: redis.Redis, keys: Keys, low_first_every: int = 10) -> None:
        self._redis = client
        # Every this many reads, low priority is read first, so it is never starved.
        self._low_first_every = low_first_every
        self._keys = keys
        self._promote = client.register_script(_PROMOTE)
        self._reads = 0
        # Called after every send, so this agent's promoter can look at the delayed set again.
        self.on_scheduled: Callable[[], None] | None = None

    def _stream(self, queue: str, priority: Priority) -> str:
        return self._keys.queue_stream(queue, int(priority))

    def _delayed(self, queue: str) -> str:
        return self._keys.delayed(queue)

    def _streams(
        self, queues: Sequence[str], priorities: Iterable[Priority] = _HIGH_FIRST
    ) -> list[str]:
        return [self._stream(q, p) for p in priorities for q in queues]

    async def send(self, tasks: Iterable[Dispatchable]) -> None:
        """Due tasks onto the stream of their queue and priority, later ones into the
        queue's delayed set; one round trip."""
        now = time.time()
        delayed = False
        async with self._redis.pipeline(transaction=False) as pipe:
            for task in tasks:
                due_at = task.run_at.timestamp()
                if due_at <= now:
                    pipe.xadd(self._stream(task.queue, task.priority), {_FIELD: task.id.hex})
                else:
                    member = f"{task.id.hex}:{int(task.priority)}"
                    pipe.zadd(self._delayed(task.queue), {member: due_at})
                    delayed = True
            await pipe.execute()
        if delayed and self.on_scheduled is not None:
            self.on_scheduled()

    async def promote_due(self, queues: Sequence[str], limit: int = 1000) -> int:
        now = time.time()
        moved = 0
        for queue in queues:
            keys = [self._delayed(queue), *(self._stream(queue, p) for p in sorted(Priority))]
            moved += await self._promote(keys=keys, args=[now, limit])
        return moved

    async def next_due_in(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest delayed task of these queues is due."""
        earliest: float | None = None
        for queue in queues:
            first: Any = await self._redis.zrange(self._delayed(queue), 0, 0, withscores=True)
            if first and (earliest is None or first[0][1] < earliest):
                earliest = first[0][1]
        return None if earliest is None else max(0.0, earliest - time.time())

    async def backlog(self, queues: Sequence[str]) -> list[tuple[str, int, float]]:
        """(queue, tasks waiting, seconds the oldest has waited) per queue: the entries of
        its streams not yet delivered to the group (its lag; the first one's id says when it
        was added) and the delayed tasks already due. Two round trips for all the queues."""
        now = time.time()
        streams = {self._stream(q, p): q for q in queues for p in Priority}
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
                pipe.xlen(stream)
            for queue in queues:
                pipe.zcount(self._delayed(queue), "-inf", now)
                pipe.zrangebyscore(self._delayed(queue), "-inf", now, 0, 1, withscores=True)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        waiting: dict[str, int] = dict.fromkeys(queues, 0)
        oldest: dict[str, float] = dict.fromkeys(queues, now)
        undelivered: dict[str, bytes] = {}
        for index, stream in enumerate(streams):
            groups, length = replies[2 * index], replies[2 * index + 1]
            if isinstance(groups, Exception):
                continue  # no such stream yet
            mine = [g for g in groups if g["name"] in (GROUP, GROUP.encode())]
            if not mine:
                continue
            # Delivered messages are deleted once acknowledged: the length less the pending
            # ones is the lag too, when Redis cannot tell it.
            lag = mine[0]["lag"]
            lag = length - mine[0]["pending"] if lag is None else lag
            if lag > 0:
                waiting[streams[stream]] += lag
                undelivered[stream] = mine[0]["last-delivered-id"]
        for index, queue in enumerate(queues):
            due, first = replies[2 * len(streams) + 2 * index : 2 * len(streams) + 2 * index + 2]
            waiting[queue] += due
            if first:
                oldest[queue] = min(oldest[queue], first[0][1])
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, last_id in undelivered.items():
                pipe.xrange(stream, min=b"(" + _as_bytes(last_id), count=1)
            firsts: list[Any] = await pipe.execute()
        for stream, first in zip(undelivered, firsts, strict=True):
            if first:
                added_at = int(first[0][0].split(b"-")[0]) / 1000
                queue = streams[stream]
                oldest[queue] = min(oldest[queue], added_at)
        return [(q, waiting[q], max(0.0, now - oldest[q]) if waiting[q] else 0.0) for q in queues]

    async def ensure_groups(self, queues: Sequence[str]) -> None:
        await self._create_groups(self._streams(queues))

    async def read(
        self, queues: Sequence[str], consumer: str, count: int, block_ms: int
    ) -> list[Message]:
        """At most `count` new messages, higher priorities first: a free slot asks for one,
        never more (no blind prefetch parks short tasks behind long ones)."""
        self._reads += 1
        order = _HIGH_FIRST if self._reads % self._low_first_every else _HIGH_FIRST[::-1]
        got: list[Message] = []
        for priority in order:
            if len(got) >= count:
                break
            got += await self._read(
                self._streams(queues, [priority]), consumer, count - len(got), None
            )
        if got:
            return got
        return await self._read(self._streams(queues), consumer, count, block_ms)

    async def _read(
        self, streams: list[str], consumer: str, count: int, block_ms: int | None
    ) -> list[Message]:
        try:
            reply: Any = await self._redis.xreadgroup(
                GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
        except ResponseError as exc:
            # NOGROUP: the stream or group is gone; UNBLOCKED: it went while this read waited
            # on it (Redis 7 answers a blocked XREADGROUP so when its stream is deleted).
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            # Redis lost its data: the groups come back, Postgres re-dispatches.
            await self._create_groups(streams)
            return []
        return [
            Message(stream.decode(), message_id, _task_id(fields))
            for stream, messages in reply or []
            for message_id, fields in messages
        ]

    async def _create_groups(self, streams: list[str]) -> None:
        for stream in streams:
            await create_group(self._redis, stream, GROUP)

    async def requeue(self, messages: Sequence[Message]) -> None:
        """Puts read messages back at the end of their streams (a read that returned more
        than there turned out to be room for)."""
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for msg in messages:
                if msg.task_id is not None:
                    pipe.xadd(msg.stream, {_FIELD: msg.task_id.hex})
            await pipe.execute()
        await self.ack(messages)

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        by_stream: dict[str, list[bytes]] = {}
        for msg in messages:
            by_stream.setdefault(msg.stream, []).append(msg.message_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _task_id(fields: dict[bytes, bytes]) -> uuid.UUID | None:
    try:
        return uuid.UUID(fields[_FIELD].decode())
    except (KeyError, ValueError):
        return None
