"""What TaskService does, free of gRPC: submit, read, cancel and redrive tasks, keeping
Postgres, the dispatch streams and the event stream in step."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

import structlog

from libs.common.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.common.paging import page_token as next_page_token
from libs.common.paging import parse_page_token
from libs.common.tracing import carrier
from services.task_agent.changes import TaskChanges
from services.task_agent.dead_letter_store import DeadLetterStore
from services.task_agent.dispatch import Dispatcher
from services.task_agent.model import DeadLetter, Holder, NewTask, Task, TaskState, TaskType
from services.task_agent.store import TaskStore
from services.task_agent.submission import Submission, check_payload, validate
from services.task_agent.type_store import TypeStore

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
MAX_PAGE = 500
# GetTasks answers at most this many ids per call.
MAX_IDS = 1000


def parse_id(value: str, what: str = "task_id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"{what} {value!r} is not a valid id") from None


class TypeCatalog:
    """Task types any live agent serves, read from Postgres at most every `ttl_s`."""

    def __init__(self, types: TypeStore, local: Sequence[TaskType], ttl_s: float = 2.0):
        self._types = types
        self._local = {t.name: t for t in local}
        self._ttl_s = ttl_s
        self._cached: dict[str, TaskType] = {}
        self._read_at = float("-inf")

    async def known(self) -> dict[str, TaskType]:
        if time.monotonic() - self._read_at > self._ttl_s:
            self._cached = {t.name: t for t in await self._types.live_types(seen_within_s=120)}
            self._read_at = time.monotonic()
        # What Postgres says wins: it knows every agent serving a type, this one included.
        return {**self._local, **self._cached}

    async def listed(self) -> list[TaskType]:
        self._read_at = float("-inf")
        return sorted((await self.known()).values(), key=lambda t: t.name)


class EagerRunner(Protocol):
    """An agent that can run tasks the moment they are submitted to it."""

    @property
    def holder(self) -> Holder: ...

    def eager_capacity(self) -> int: ...

    def can_take_eagerly(self, new: NewTask) -> bool: ...

    def adopt(self, claimed: Sequence[Task]) -> None: ...


class Tasks:
    def __init__(
        self,
        store: TaskStore,
        dead_letters: DeadLetterStore,
        dispatcher: Dispatcher,
        changes: TaskChanges,
        catalog: TypeCatalog,
        max_payload_bytes: int,
        eager: EagerRunner | None = None,
    ) -> None:
        self._store = store
        self._dead_letters = dead_letters
        self._dispatcher = dispatcher
        self._changes = changes
        self._catalog = catalog
        self._max_payload_bytes = max_payload_bytes
        self._eager = eager

    async def submit(self, batch: Sequence[Submission]) -> list[tuple[Task, bool]]:
        """Validates the whole batch first: one bad submission stores nothing."""
        if not batch:
            raise InvalidArgument("no tasks given")
        if len(batch) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} tasks per batch, got {len(batch)}")
        now = datetime.now(UTC)
        types = await self._catalog.known()
        trace_context = carrier()
        new = []
        for index, sub in enumerate(batch):
            try:
                context = sub.trace_context or trace_context
                new.append(validate(sub, types, self._max_payload_bytes, now, context))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"tasks[{index}]: {exc}" if len(batch) > 1 else str(exc)
                ) from None
        return await self._store_and_dispatch(new, now)

    async def record_results(
        self,
        outcomes: Sequence[tuple[uuid.UUID, int, bytes]],
        follows: Sequence[tuple[uuid.UUID, Submission]],
    ) -> tuple[list[Task], list[Task], dict[uuid.UUID, list[uuid.UUID]]]:
        """Records results (task id, attempt, result) and, in the same statement, stores the
        continuations (`follows`: the id of the task each follows, and its submission) of
        the tasks whose results it records, and runs or dispatches them. One TaskService
        refuses is dropped: its submitter, which hears of the task's end, decides what
        becomes of it. Answers the tasks recorded, the continuations stored, and the ids
        of those each recorded task continued with; the caller announces them."""
        now = datetime.now(UTC)
        types = await self._catalog.known() if follows else {}
        continuing: list[tuple[uuid.UUID, NewTask]] = []
        for after, sub in follows:
            try:
                # Their own continuations were checked with the task they continue.
                task = validate(
                    replace(sub, then=b""), types, self._max_payload_bytes, now, sub.trace_context
                )
            except InvalidArgument as exc:
                log.info("continuation refused", type=sub.type, error=str(exc))
                continue
            continuing.append((after, replace(task, continuations=sub.then or None)))
        held = self._take_eagerly([new for _, new in continuing], now)
        holder = self._eager.holder if self._eager else None
        recorded, created = await self._store.succeed(outcomes, continuing, now, held, holder)
        if await self._run_or_dispatch(created, held):
            await asyncio.sleep(0)  # their handlers start before the ends are announced
        stored = {t.id for t in created}
        continued: dict[uuid.UUID, list[uuid.UUID]] = {}
        for after, new in continuing:
            if new.id in stored:
                continued.setdefault(after, []).append(new.id)
        return recorded, created, continued

    async def _store_and_dispatch(
        self, new: Sequence[NewTask], now: datetime
    ) -> list[tuple[Task, bool]]:
        held = self._take_eagerly(new, now)
        holder = self._eager.holder if self._eager else None
        stored = await self._store.insert(new, now, held, holder)
        created = [task for task, was_created in stored if was_created]
        await self._run_or_dispatch(created, held)
        await self._changes.announce(created=created)
        return stored

    async def _run_or_dispatch(self, created: Sequence[Task], held: set[uuid.UUID]) -> bool:
        """Runs the tasks just stored claimed by this agent, and dispatches the others;
        answers whether it runs any."""
        await self._dispatcher.send([t for t in created if t.id not in held])
        running = [t for t in created if t.id in held]
        if self._eager is not None and running:
            self._eager.adopt(running)
        return bool(running)

    def _take_eagerly(self, new: Sequence[NewTask], now: datetime) -> set[uuid.UUID]:
        """The tasks this agent claims as it stores them, up to its idle slots: they start
        without a trip through Redis and a claim (eager execution, as Temporal's eager
        activities); the rest are dispatched."""
        if self._eager is None:
            return set()
        room = self._eager.eager_capacity()
        held: set[uuid.UUID] = set()
        for task in new:
            if len(held) >= room:
                break
            if task.run_at <= now and self._eager.can_take_eagerly(task):
                held.add(task.id)
        return held

    async def get(self, task_id: str) -> Task:
        """Through the cache: a miss reads Postgres and fills it (refused if a change wrote a
        newer state meanwhile)."""
        key = parse_id(task_id)
        task = await self._changes.cache.get(key)
        if task is None:
            task = await self._store.get(key)
            if task is None:
                raise NotFound(f"task {task_id} not found")
            await self._changes.cache.put([task])
        return task

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """Those of `task_ids` that exist, in the order asked; cached ones from the cache,
        the rest from Postgres in one query (and cached)."""
        if len(task_ids) > MAX_IDS:
            raise InvalidArgument(f"at most {MAX_IDS} task ids per call, not {len(task_ids)}")
        keys = list(dict.fromkeys(parse_id(t, "task_ids") for t in task_ids))
        found = await self._changes.cache.get_many(keys)
        missing = [k for k in keys if k not in found]
        if missing:
            read = await self._store.get_many(missing)
            await self._changes.cache.put(read)
            found.update((t.id, t) for t in read)
        return [found[k] for k in keys if k in found]

    async def list_tasks(
        self,
        state: TaskState | None,
        type_: str | None,
        queue: str | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Task], str]:
        size = min(page_size or 50, MAX_PAGE)
        after = parse_page_token(page_token)
        found = await self._store.list_tasks(state, type_, queue, size + 1, after)
        if len(found) <= size:
            return found, ""
        last = found[size - 1]
        return found[:size], next_page_token((last.created_at, last.id))

    async def cancel(self, task_id: str, reason: str) -> Task:
        task = await self._store.cancel(parse_id(task_id), reason or "cancelled by request")
        if task is None:
            raise NotFound(f"task {task_id} not found")
        if task.state == TaskState.CANCELLED:
            await self._changes.announce([task])
        elif task.state != TaskState.RUNNING:
            raise FailedPrecondition(f"task {task_id} is already {task.state.value}")
        return task

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task now, then after every change until it is terminal."""
        # Subscribed before the first read, so a change right after it is not missed.
        async with self._changes.events.subscribe() as events:
            task = await self.get(task_id)
            yield task
            subject = f"task/{task.id}"
            last = task
            while not last.state.terminal:
                try:
                    event = await asyncio.wait_for(events.next_for(subject), timeout=5.0)
                except TimeoutError:
                    event = None  # a missed message costs one read, not a stuck watch
                current = await self.get(task_id)
                if event is not None or current.version != last.version:
                    if current.version > last.version:
                        yield current
                    last = current

    async def dead_letters(
        self, queue: str | None, type_: str | None, page_size: int, page_token: str
    ) -> tuple[list[DeadLetter], str]:
        size = min(page_size or 50, MAX_PAGE)
        try:
            offset = int(page_token) if page_token else 0
        except ValueError:
            raise InvalidArgument("page_token is not valid") from None
        found = await self._dead_letters.page(queue, type_, size + 1, offset)
        return found[:size], str(offset + size) if len(found) > size else ""

    async def redrive(self, dead_letter_id: str, payload: bytes | None) -> Task:
        letter = await self._dead_letters.get(parse_id(dead_letter_id, "dead_letter_id"))
        if letter is None:
            raise NotFound(f"dead letter {dead_letter_id} not found")
        if letter.redriven_task_id:
            raise FailedPrecondition(
                f"dead letter {dead_letter_id} was already redriven as task {letter.redriven_task_id}"
            )
        old = letter.task
        now = datetime.now(UTC)
        new = NewTask(
            type=old.type,
            payload=check_payload(payload, self._max_payload_bytes)
            if payload is not None
            else old.payload,
            queue=old.queue,
            priority=old.priority,
            retry=old.retry,
            timeout_s=old.timeout_s,
            run_at=now,
            fallback_type=old.fallback_type,
            concurrency_key=old.concurrency_key,
            parent_id=old.id,
            labels=old.labels,
            trace_context=carrier(),
        )
        task = await self._dead_letters.redrive(letter.id, new, now)
        if task is None:
            raise FailedPrecondition(f"dead letter {dead_letter_id} was already redriven")
        await self._dispatcher.send([task])
        await self._changes.announce([task])
        return task

    async def purge(self, queue: str | None, type_: str | None, older_than: datetime | None) -> int:
        return await self._dead_letters.purge(queue, type_, older_than)

    async def types(self) -> list[TaskType]:
        return await self._catalog.listed()

    async def queue_stats(self) -> list[tuple[str, int, float, int]]:
        return await self._store.queue_stats()
