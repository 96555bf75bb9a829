"""The live event feed behind `WebSocket /v1/events`: one reader per gateway follows the
event stream (XREAD BLOCK from the last entry it handed out) and puts each event in the
bounded queue of every connected client whose subscription names it. A client that falls a
whole queue behind is cut off instead of letting memory grow; it comes back with `after`
and the stream fills the gap.

Positions. An event's position is its stream entry's id and its index in the entry's batch,
written "1732712345678-0:3"; a bare entry id, "1732712345678-0", stands for the whole
entry. The reader's position is the last entry it handed out.

Hand-over. A subscriber joins at the reader's position P without an await between reading
P and joining, so every entry after P reaches its queue; a resuming client first replays
(after, P] from the stream with XRANGE, then drains its queue, and drops anything at or
before `after` (a client may resume here with a position another gateway handed it, ahead
of this reader): no gap, no duplicate."""

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentry.events.v1 import events_pb2
from libs.common.events import _FIELD as EVENT_FIELD
from libs.common.events import event_data
from libs.common.redis_client import Keys

log = structlog.get_logger(__name__)

# (entry milliseconds, entry sequence, index in the entry's batch).
Position = tuple[int, int, int]
WHOLE_ENTRY = sys.maxsize
START: Position = (0, 0, WHOLE_ENTRY)
_POSITION = re.compile(r"(\d+)-(\d+)(?::(\d+))?")
# Entries one XREAD or one XRANGE page brings.
_READ_COUNT = 1000
_REPLAY_PAGE = 500
_BLOCK_MS = 5000
_RETRY_S = 1.0


def parse_position(text: str) -> Position:
    match = _POSITION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an event id (like 1732712345678-0:3)")
    ms, seq, index = match.groups()
    return int(ms), int(seq), WHOLE_ENTRY if index is None else int(index)


def format_position(position: Position) -> str:
    ms, seq, index = position
    return f"{ms}-{seq}" if index == WHOLE_ENTRY else f"{ms}-{seq}:{index}"


def _entry_position(entry_id: bytes) -> Position:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq), WHOLE_ENTRY


@dataclass(frozen=True, slots=True)
class LiveEvent:
    position: Position
    type: str
    subject: str
    # The JSON text clients get, encoded once however many clients get it.
    frame: str


@dataclass(frozen=True)
class Topics:
    """What a client subscribed to: subjects ("task/<id>"), event types, or everything."""

    subjects: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    everything: bool = False

    def name(self, type_: str, subject: str) -> bool:
        return self.everything or subject in self.subjects or type_ in self.types


class Subscriber:
    """One client's place in the feed. `readable` says whether the client may see events
    about a subject; `on_overflow` is called once when its queue overflowed and it left."""

    def __init__(
        self,
        topics: Topics,
        readable: Callable[[str], bool],
        queue_size: int,
        since: Position,
        on_overflow: Callable[[], None],
    ) -> None:
        self.topics = topics
        self.readable = readable
        self.queue: asyncio.Queue[LiveEvent] = asyncio.Queue(queue_size)
        # Where it joined the live feed: every later entry reaches its queue.
        self.since = since
        self.on_overflow = on_overflow

    def wants(self, type_: str, subject: str) -> bool:
        return self.topics.name(type_, subject) and self.readable(subject)


class LiveEvents:
    def __init__(self, client: redis.Redis, keys: Keys, queue_size: int) -> None:
        self._redis = client
        self._stream = keys.event_stream()
        self._queue_size = queue_size
        self._position: Position | None = None
        self._ready = asyncio.Event()
        self._everything: set[Subscriber] = set()
        self._by_subject: dict[str, set[Subscriber]] = {}
        self._by_type: dict[str, set[Subscriber]] = {}

    @property
    def position(self) -> Position:
        if self._position is None:
            raise RuntimeError("the event reader has not started")
        return self._position

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Follows the stream until cancelled. Redis errors are logged and the read tried
        again from the same entry, so clients see a delay, never a gap."""
        try:
            await self._follow()
        except Exception:
            # Nobody awaits this task until shutdown: say now that the feed stopped.
            log.exception("the live event feed stopped")
            raise

    async def _follow(self) -> None:
        last: bytes | None = None
        while True:
            try:
                if last is None:
                    last = await self._tail()
                    self._position = _entry_position(last)
                    self._ready.set()
                reply: Any = await self._redis.xread(
                    {self._stream: last}, count=_READ_COUNT, block=_BLOCK_MS
                )
            except RedisTimeoutError:
                # redis-py's asyncio client can time out a blocking XREAD that simply had
                # nothing to answer (redis/redis-py#3138): read again at once.
                continue
            except RedisError:
                log.warning("the event stream is unreadable; reading again", exc_info=True)
                await asyncio.sleep(_RETRY_S)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self._hand_out(entry_id, fields)
                    last = entry_id

    def subscribe(
        self, topics: Topics, readable: Callable[[str], bool], on_overflow: Callable[[], None]
    ) -> Subscriber:
        """A subscriber that gets every event after the reader's position that it wants."""
        subscriber = Subscriber(topics, readable, self._queue_size, self.position, on_overflow)
        self._index(subscriber)
        return subscriber

    def change(self, subscriber: Subscriber, topics: Topics) -> Position:
        """New topics for `subscriber`, from the reader's position, which it answers."""
        self._unindex(subscriber)
        subscriber.topics = topics
        self._index(subscriber)
        return self.position

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._unindex(subscriber)

    async def replay(self, subscriber: Subscriber, after: Position) -> AsyncIterator[LiveEvent]:
        """The events after `after` up to where `subscriber` joined the feed that it wants,
        read from the stream page by page."""
        start = f"{after[0]}-{after[1]}"
        end = format_position(subscriber.since)
        while True:
            entries: Any = await self._redis.xrange(
                self._stream, min=start, max=end, count=_REPLAY_PAGE
            )
            for entry_id, fields in entries:
                entry = _entry_position(entry_id)
                for index, event in enumerate(_events(entry_id, fields)):
                    position = (entry[0], entry[1], index)
                    if position > after and subscriber.wants(event.type, event.subject):
                        yield _live(position, event)
            if len(entries) < _REPLAY_PAGE:
                return
            start = "(" + entries[-1][0].decode()

    async def _tail(self) -> bytes:
        last: Any = await self._redis.xrevrange(self._stream, count=1)
        return last[0][0] if last else b"0-0"

    def _hand_out(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        entry = _entry_position(entry_id)
        overflowed: set[Subscriber] = set()
        for index, event in enumerate(_events(entry_id, fields)):
            live: LiveEvent | None = None
            for subscriber in self._targets(event.type, event.subject):
                if subscriber in overflowed or not subscriber.wants(event.type, event.subject):
                    continue
                if live is None:
                    live = _live((entry[0], entry[1], index), event)
                try:
                    subscriber.queue.put_nowait(live)
                except asyncio.QueueFull:
                    overflowed.add(subscriber)
        self._position = entry
        for subscriber in overflowed:
            self._unindex(subscriber)
            subscriber.on_overflow()

    def _targets(self, type_: str, subject: str) -> Iterable[Subscriber]:
        by_subject = self._by_subject.get(subject)
        by_type = self._by_type.get(type_)
        if by_subject is None and by_type is None:
            return self._everything
        return self._everything.union(by_subject or (), by_type or ())

    def _index(self, subscriber: Subscriber) -> None:
        topics = subscriber.topics
        if topics.everything:
            self._everything.add(subscriber)
        for subject in topics.subjects:
            self._by_subject.setdefault(subject, set()).add(subscriber)
        for type_ in topics.types:
            self._by_type.setdefault(type_, set()).add(subscriber)

    def _unindex(self, subscriber: Subscriber) -> None:
        topics = subscriber.topics
        self._everything.discard(subscriber)
        for subject in topics.subjects:
            _discard(self._by_subject, subject, subscriber)
        for type_ in topics.types:
            _discard(self._by_type, type_, subscriber)


def _discard(index: dict[str, set[Subscriber]], key: str, subscriber: Subscriber) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(subscriber)
        if not members:
            del index[key]


def _events(entry_id: bytes, fields: dict[bytes, bytes]) -> Iterable[events_pb2.Event]:
    try:
        return events_pb2.EventBatch.FromString(fields[EVENT_FIELD]).events
    except (KeyError, DecodeError):
        log.warning("an event stream entry is not an event batch", entry=entry_id.decode())
        return ()


def _live(position: Position, event: events_pb2.Event) -> LiveEvent:
    frame = {
        "id": format_position(position),
        "type": event.type,
        "subject": event.subject,
        "time": event.time.ToJsonString(),
        "data": event_data(event),
        "source": event.source,
    }
    return LiveEvent(position, event.type, event.subject, json.dumps(frame, separators=(",", ":")))
