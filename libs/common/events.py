"""The event envelope and its two paths: a durable Redis stream read by consumer groups
(nothing missed while a consumer restarts) and pub/sub for live fan-out."""

import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from agentry.events.v1 import events_pb2
from libs.common.redis_client import Keys, create_group
from libs.common.tracing import carrier

_FIELD = b"e"


def make_event(type_: str, subject: str, data: Any, source: str) -> events_pb2.Event:
    [event] = make_events([(type_, subject, data)], source)
    return event


def make_events(items: Sequence[tuple[str, str, Any]], source: str) -> list[events_pb2.Event]:
    """Events of one change set: one clock reading, and ids that share a random prefix
    (unique all the same), which keeps a busy agent's per-event cost low. Each carries the
    current trace context: whoever consumes it continues the trace."""
    now = Timestamp()
    now.GetCurrentTime()
    prefix = uuid.uuid4().hex
    trace_context = carrier()
    return [
        events_pb2.Event(
            id=f"{prefix}-{index}",
            type=type_,
            subject=subject,
            time=now,
            data=json.dumps(data, separators=(",", ":")).encode(),
            source=source,
            trace_context=trace_context,
        )
        for index, (type_, subject, data) in enumerate(items)
    ]


def sealed_result_aad(task_id: uuid.UUID) -> bytes:
    """What binds a task.succeeded event's sealed result to its task."""
    return b"event.sealed_result:" + task_id.bytes


def event_data(event: events_pb2.Event) -> Any:
    """The event's data, decoded; None when it has none or it is not JSON."""
    if not event.data:
        return None
    try:
        return json.loads(event.data)
    except ValueError:
        return None


def event_time(event: events_pb2.Event) -> float:
    ts: Timestamp = event.time
    return ts.seconds + ts.nanos / 1e9


class EventBus:
    """Publishes to the durable stream and to pub/sub in one round trip."""

    def __init__(self, client: redis.Redis, keys: Keys, source: str, maxlen: int = 1_000_000):
        self._redis = client
        self._keys = keys
        self._source = source
        self._maxlen = maxlen

    @property
    def source(self) -> str:
        return self._source

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator["Subscription"]:
        """Live events from pub/sub, from now on (no history: read the stream for that)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._keys.event_channel())
        try:
            yield Subscription(pubsub)
        finally:
            await pubsub.aclose()

    async def publish(self, type_: str, subject: str, data: Any = None) -> events_pb2.Event:
        event = make_event(type_, subject, data, self._source)
        await self.publish_events([event])
        return event

    async def publish_events(self, events: Sequence[events_pb2.Event]) -> None:
        if not events:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            self.queue_events(pipe, events)
            await pipe.execute()

    def queue_events(self, pipe: Pipeline, events: Sequence[events_pb2.Event]) -> None:
        """Adds the publication of `events` to a caller's pipeline (one round trip for the
        caller's own writes and the events together): one stream entry and one pub/sub
        message for the whole batch."""
        raw = events_pb2.EventBatch(events=events).SerializeToString()
        pipe.xadd(self._keys.event_stream(), {_FIELD: raw}, maxlen=self._maxlen, approximate=True)
        pipe.publish(self._keys.event_channel(), raw)


class Subscription:
    def __init__(self, pubsub: "redis.client.PubSub") -> None:
        self._pubsub = pubsub
        self._pending: deque[events_pb2.Event] = deque()

    async def next(self) -> events_pb2.Event:
        while not self._pending:
            message = await self._pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "message":
                self._pending.extend(events_pb2.EventBatch.FromString(message["data"]).events)
        return self._pending.popleft()

    async def next_for(self, subject: str) -> events_pb2.Event:
        while True:
            event = await self.next()
            if event.subject == subject:
                return event


@dataclass(frozen=True)
class Delivery:
    """One stream entry: the events of one batch, acknowledged together."""

    message_id: bytes
    events: Sequence[events_pb2.Event]


def events_of(deliveries: Sequence[Delivery]) -> list[events_pb2.Event]:
    return [event for delivery in deliveries for event in delivery.events]


class EventConsumer:
    """Reads the event stream as one member of a consumer group. Messages another member
    took but did not acknowledge within `min_idle_ms` are claimed again, so a consumer that
    died loses nothing; a group that vanished with Redis's data is created again. Handled
    messages are acknowledged with the next read, in its round trip."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        consumer: str,
        batch: int = 100,
        block_ms: int = 1000,
        min_idle_ms: int = 30_000,
    ) -> None:
        self._redis = client
        self._stream = keys.event_stream()
        self._group = group
        self._consumer = consumer
        self._batch = batch
        self._block_ms = block_ms
        self._min_idle_ms = min_idle_ms
        self._claim_cursor = b"0-0"
        # When stale messages were last looked for: at most a few times per idle period,
        # not on every read (a round trip each).
        self._claimed_at = float("-inf")
        # Handled, to be acknowledged with the next read (or `flush`).
        self._handled: list[bytes] = []

    @property
    def group(self) -> str:
        return self._group

    async def ensure_group(self) -> None:
        await create_group(self._redis, self._stream, self._group)

    async def standing(self) -> tuple[int, int] | None:
        """(entries not yet delivered to the group, entries delivered and not acknowledged);
        None while the group does not exist, or Redis cannot tell the lag (entries were
        trimmed past what the group read)."""
        try:
            groups: Any = await self._redis.xinfo_groups(self._stream)
        except ResponseError:
            return None
        for group in groups:
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) == self._group:
                lag = group.get("lag")
                return None if lag is None else (int(lag), int(group["pending"]))
        return None

    async def read(self) -> list[Delivery]:
        """The next batch: first what others left pending too long, then new messages."""
        try:
            claimed = await self._claim_stale()
            if claimed:
                return claimed
            async with self._acknowledging() as pipe:
                pipe.xreadgroup(
                    self._group,
                    self._consumer,
                    {self._stream: ">"},
                    count=self._batch,
                    block=self._block_ms,
                )
                replies: Any = await pipe.execute()
            reply = replies[-1]
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [
            self._delivery(mid, fields) for _, messages in reply or [] for mid, fields in messages
        ]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Marks `deliveries` handled: the next read acknowledges them."""
        self._handled += [d.message_id for d in deliveries]

    async def flush(self) -> None:
        """Acknowledges what was handled since the last read (before the consumer stops)."""
        if self._handled:
            async with self._acknowledging() as pipe:
                await pipe.execute()

    @asynccontextmanager
    async def _acknowledging(self) -> AsyncIterator[Pipeline]:
        """A pipeline that starts with the acknowledgement of what was handled; those that
        fail to go are kept for the next one. (Handlers may mark more while it runs.)"""
        sent, self._handled = self._handled, []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if sent:
                    pipe.xack(self._stream, self._group, *sent)
                yield pipe
        except BaseException:
            self._handled = sent + self._handled
            raise

    async def _claim_stale(self) -> list[Delivery]:
        now = time.monotonic()
        if self._claim_cursor == b"0-0" and now - self._claimed_at < self._min_idle_ms / 4000:
            return []
        self._claimed_at = now
        cursor, messages, _ = await self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=self._min_idle_ms,
            start_id=self._claim_cursor,
            count=self._batch,
        )
        self._claim_cursor = cursor
        return [self._delivery(mid, fields) for mid, fields in messages if fields]

    @staticmethod
    def _delivery(message_id: bytes, fields: dict[bytes, bytes]) -> Delivery:
        return Delivery(message_id, events_pb2.EventBatch.FromString(fields[_FIELD]).events)
