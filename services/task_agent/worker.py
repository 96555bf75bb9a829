"""The task agent's work loop: free slots pull dispatch messages, claims are made in
Postgres with a fencing token, shared rate and concurrency limits are honoured before a
handler starts, handlers run under their timeout, results are written in batches, leases
are renewed while handlers run."""

import asyncio
import json
import multiprocessing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from libs.common import tracing
from libs.common.waiting import first_of
from services.task_agent import continuations
from services.task_agent.changes import TaskChanges
from services.task_agent.convert import submission
from services.task_agent.dispatch import Dispatcher
from services.task_agent.handlers import (
    Handler,
    Handlers,
    NonRetryableError,
    Resources,
    RetryableError,
    TaskContext,
)
from services.task_agent.limits import ConcurrencySlots
from services.task_agent.model import DeadLetterReason, Holder, NewTask, Task, TaskType
from services.task_agent.retry import after_failure
from services.task_agent.store import TaskStore
from services.task_agent.submission import Submission
from services.task_agent.tasks import TypeCatalog

log = structlog.get_logger(__name__)

# A task held back by a concurrency limit looks again after this long.
_SLOT_RETRY_S = 0.25


@dataclass
class _Running:
    task: Task
    job: asyncio.Task[None] | None = None
    ctx: TaskContext | None = None
    slot_key: str | None = None
    cancel_requested: bool = False
    result: bytes | None = field(default=None, repr=False)


# Records results (id, attempt, result) with the continuations of the tasks that succeeded
# (the id of the task each follows, and its submission): answers the tasks recorded, the
# continuations stored, and those each recorded task continued with.
RecordResults = Callable[
    [Sequence[tuple[uuid.UUID, int, bytes]], Sequence[tuple[uuid.UUID, Submission]]],
    Awaitable[tuple[list[Task], list[Task], dict[uuid.UUID, list[uuid.UUID]]]],
]


class Worker:
    # TaskService's, set once it is built (it runs tasks through this worker as they are
    # submitted).
    record_results: RecordResults

    def __init__(
        self,
        agent_id: str,
        store: TaskStore,
        dispatcher: Dispatcher,
        changes: TaskChanges,
        handlers: Handlers,
        catalog: TypeCatalog,
        resources: Resources,
        slots: ConcurrencySlots,
        concurrency: int,
        lease_s: float,
        read_block_ms: int = 500,
    ) -> None:
        self._agent = agent_id
        self._store = store
        self._dispatcher = dispatcher
        self._changes = changes
        self._handlers = handlers
        self._catalog = catalog
        self._resources = resources
        self._slots = slots
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._read_block_ms = read_block_ms
        self._running: dict[uuid.UUID, _Running] = {}
        self._slot_free = asyncio.Event()
        self._results: list[_Running] = []
        self._results_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._backlog = False
        self._processes: ProcessPoolExecutor | None = None
        self.last_read_at = 0.0

    def _process_pool(self) -> ProcessPoolExecutor:
        # Spawned, not forked: a fork of a process running gRPC threads is not safe.
        if self._processes is None:
            self._processes = ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
        return self._processes

    @property
    def in_hand(self) -> int:
        return len(self._running)

    @property
    def load(self) -> float:
        return min(1.0, len(self._running) / self._concurrency)

    def stalled(self, now: float, after_s: float) -> bool:
        """True when slots are free but nothing has been read for `after_s` seconds."""
        return len(self._running) < self._concurrency and now - self.last_read_at > after_s

    async def run(self, stop: asyncio.Event) -> None:
        """Pulls work until `stop` is set. Returns with handlers possibly still running:
        `drain` finishes or hands them back."""
        queues = self._handlers.queues
        loop = asyncio.get_running_loop()
        # Before the first await: health must not read the initial 0.0 as a stalled consumer.
        self.last_read_at = loop.time()
        await self._dispatcher.ensure_groups(queues)
        while not stop.is_set():
            free = self._concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await first_of(self._slot_free.wait(), stop.wait())
                continue
            messages = await self._dispatcher.read(queues, self._agent, free, self._read_block_ms)
            self.last_read_at = loop.time()
            # A read that filled every free slot may have left work waiting.
            self._backlog = len(messages) >= free
            if not messages:
                continue
            # Tasks started eagerly while this read waited may have taken its slots: what
            # there is no room for now goes back to its stream, highest priorities kept.
            room = self._concurrency - len(self._running)
            if len(messages) > room:
                messages = sorted(messages, key=lambda m: m.priority, reverse=True)
                await self._dispatcher.requeue(messages[room:])
                messages = messages[:room]
                if not messages:
                    continue
            ids = [m.task_id for m in messages if m.task_id is not None]
            claimed = await self._store.claim(ids, self._agent, self._lease_s) if ids else []
            # Postgres now holds the claim (or said the hint was stale): the message is done.
            await self._dispatcher.ack(messages)
            self.adopt(claimed)
            # Tasks under a shared limit announce their start once they pass it.
            await self._changes.announce([t for t in claimed if not self._limited(t)])

    @property
    def holder(self) -> Holder:
        return Holder(self._agent, self._lease_s)

    def eager_capacity(self) -> int:
        """Slots this agent can fill with tasks as they are submitted (eager execution)
        without passing over work that waits on the streams: none while a backlog may be
        there, or once it is stopping."""
        if self._backlog or self._drained.is_set():
            return 0
        return self._concurrency - len(self._running)

    def can_take_eagerly(self, new: NewTask) -> bool:
        handler = self._handlers.get(new.type)
        if handler is None or new.queue not in self._handlers.queues:
            return False
        spec = handler.task_type
        limited = spec.rate_limit_per_s > 0 or bool(new.concurrency_key and spec.concurrency_limit)
        return not limited

    def adopt(self, claimed: Sequence[Task]) -> None:
        """Runs tasks this agent holds the claim of."""
        for task in claimed:
            entry = _Running(task)
            self._running[task.id] = entry
            entry.job = asyncio.create_task(self._traced(entry))

    def _limited(self, task: Task) -> bool:
        handler = self._handlers.get(task.type)
        if handler is None:
            return False
        spec = handler.task_type
        return spec.rate_limit_per_s > 0 or bool(task.concurrency_key and spec.concurrency_limit)

    async def drain(self, grace_s: float) -> None:
        """Lets running handlers finish within `grace_s` (leases still renewed), then hands
        the rest back."""
        pending = [e.job for e in self._running.values() if e.job is not None]
        if pending:
            log.info("draining", running=len(pending), grace_s=grace_s)
            await asyncio.wait(pending, timeout=grace_s)
        # A finished job whose result is not yet written is not handed back: the flush below
        # records it (handing it back would refuse the result and run the task again).
        left = [e for e in self._running.values() if e.job is not None and not e.job.done()]
        for entry in left:
            assert entry.job is not None
            entry.job.cancel()
        await asyncio.gather(*(e.job for e in left if e.job), return_exceptions=True)
        now = datetime.now(UTC)
        handed_back = []
        for entry in left:
            back = await self._store.retry(
                entry.task.id,
                entry.task.attempts,
                now,
                "handed_back",
                "the agent stopped before it finished",
            )
            if back is not None:
                handed_back.append(back)
            await self._release_slot(entry)
        await self._dispatcher.send(handed_back)
        await self._flush_results()
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)
        self._drained.set()
        if handed_back:
            log.info("handed back", tasks=len(handed_back))

    async def write_results(self, stop: asyncio.Event) -> None:
        """Writes successful results in batches: whatever finished while the previous
        batch was being written goes in the next statement."""
        while not stop.is_set():
            await first_of(self._results_ready.wait(), stop.wait())
            await self._flush_results()

    async def renew_leases(self) -> None:
        """Renews leases (and concurrency slots) of what this agent holds until the drain is
        over, and cancels the handlers of tasks whose cancellation was requested."""
        while not self._drained.is_set():
            await first_of(asyncio.sleep(self._lease_s / 3), self._drained.wait())
            held = list(self._running.values())
            cancelled = await self._store.heartbeat(
                [(e.task.id, e.task.attempts) for e in held], self._lease_s
            )
            for entry in held:
                if entry.slot_key is not None:
                    await self._slots.renew(entry.slot_key, entry.task.id.hex, self._lease_s)
            for task_id in cancelled:
                wanted = self._running.get(task_id)
                if wanted is not None and not wanted.cancel_requested and wanted.job is not None:
                    wanted.cancel_requested = True
                    if wanted.ctx is not None:
                        wanted.ctx.cancelled.set()
                    wanted.job.cancel()

    async def _flush_results(self) -> None:
        self._results_ready.clear()
        batch, self._results = self._results, []
        if not batch:
            return
        # Their handlers are done: the slots take new work, continuations first.
        for entry in batch:
            await self._finish(entry)
        outcomes = [(e.task.id, e.task.attempts, e.result or b"null") for e in batch]
        follows = [follow for e in batch if e.task.continuations for follow in self._follows(e)]
        recorded, created, continued = await self.record_results(outcomes, follows)
        if len(recorded) < len(batch):
            kept = {t.id for t in recorded}
            for entry in batch:
                if entry.task.id not in kept:
                    log.warning(
                        "stale result refused",
                        task_id=str(entry.task.id),
                        attempt=entry.task.attempts,
                    )
        # The ends say what the tasks continued with: their submitters need not submit it.
        await self._changes.announce(recorded, continued=continued, created=created)

    def _follows(self, entry: _Running) -> list[tuple[uuid.UUID, Submission]]:
        """The continuations a finished task submits with its result. Failing to build them
        never costs the result: the task's submitter hears of its end and submits them."""
        task = entry.task
        assert task.continuations is not None
        try:
            specs = continuations.follow(task.continuations, entry.result, task.trace_context)
        except Exception:
            log.exception("continuations not built", task_id=str(task.id))
            return []
        return [(task.id, submission(spec)) for spec in specs]

    async def _finish(self, entry: _Running) -> None:
        await self._release_slot(entry)
        self._running.pop(entry.task.id, None)
        self._slot_free.set()

    async def _release_slot(self, entry: _Running) -> None:
        if entry.slot_key is not None:
            await self._slots.release(entry.slot_key, entry.task.id.hex)
            entry.slot_key = None

    async def _traced(self, entry: _Running) -> None:
        """The execution as a span of the submission's trace; its log lines name the task."""
        task = entry.task
        attributes: dict[str, str | int] = {
            "agentry.task.id": str(task.id),
            "agentry.task.attempt": task.attempts,
        }
        with (
            tracing.continued(f"execute {task.type}", task.trace_context, attributes=attributes),
            structlog.contextvars.bound_contextvars(task_id=str(task.id), task_type=task.type),
        ):
            await self._execute(entry)

    async def _execute(self, entry: _Running) -> None:
        task = entry.task
        result_pending = False
        try:
            handler = self._handlers.get(task.type)
            if handler is None:
                await self._end(
                    task,
                    DeadLetterReason.NO_HANDLER,
                    "no_handler",
                    f"no handler for task type {task.type!r} on this agent",
                )
                return
            try:
                payload = json.loads(task.payload)
            except ValueError as exc:
                await self._end(
                    task, DeadLetterReason.UNDECODABLE_PAYLOAD, "undecodable_payload", str(exc)
                )
                return
            if self._limited(task):
                if not await self._within_limits(entry, handler.task_type):
                    return
                await self._changes.announce([task])
            result_pending = await self._attempt(entry, handler, payload)
        except asyncio.CancelledError:
            if entry.cancel_requested:
                ended = await self._store.finish_cancelled(task.id, task.attempts)
                await self._changes.announce([ended] if ended else [])
                await self._finish(entry)
                return
            raise
        except Exception:
            log.exception("task bookkeeping failed", task_id=str(task.id))
        if not result_pending:
            await self._finish(entry)

    async def _within_limits(self, entry: _Running, task_type: TaskType) -> bool:
        """Takes a token of the type's shared rate limit and a slot of its concurrency key.
        When either says "not yet", the claim is undone (the attempt is not spent) and the
        task comes back when it may run: it waits in the delayed set, not in a slot."""
        task = entry.task
        wait_s = 0.0
        if task_type.rate_limit_per_s > 0:
            wait_s = await self._resources.limiter.acquire(
                f"type:{task.type}", task_type.rate_limit_per_s
            )
        if wait_s == 0 and task.concurrency_key and task_type.concurrency_limit > 0:
            key = f"{task.type}:{task.concurrency_key}"
            if await self._slots.take(key, task_type.concurrency_limit, task.id.hex, self._lease_s):
                entry.slot_key = key
            else:
                wait_s = _SLOT_RETRY_S
        if wait_s == 0:
            return True
        released = await self._store.release(
            task.id, task.attempts, datetime.now(UTC) + timedelta(seconds=wait_s)
        )
        if released is not None:
            await self._dispatcher.send([released])
        return False

    async def _attempt(self, entry: _Running, handler: Handler, payload: Any) -> bool:
        """Runs one attempt; True when a result waits to be written."""
        task = entry.task
        now = datetime.now(UTC)
        if task.deadline_at is not None and now >= task.deadline_at:
            await self._end(
                task,
                DeadLetterReason.DEADLINE_EXCEEDED,
                "deadline_exceeded",
                "the task's deadline passed before this attempt",
            )
            return False
        timeout = task.timeout_s
        if task.deadline_at is not None:
            timeout = min(timeout, (task.deadline_at - now).total_seconds())
        entry.ctx = ctx = TaskContext(
            task_id=str(task.id),
            type=task.type,
            attempt=task.attempts,
            resources=self._resources,
            _report=lambda p: self._report_progress(task, p),
        )
        try:
            async with asyncio.timeout(timeout):
                if handler.in_process:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(self._process_pool(), handler.fn, payload)
                elif handler.is_async:
                    result = await handler.fn(payload, ctx)
                else:
                    result = await asyncio.to_thread(handler.fn, payload, ctx)
            encoded = json.dumps(result, separators=(",", ":")).encode()
        except TimeoutError:
            ctx.cancelled.set()
            await self._failed(
                task,
                "timeout",
                f"attempt timed out after {timeout:.3f}s",
                retryable=True,
                timed_out=True,
            )
        except NonRetryableError as exc:
            await self._failed(task, type(exc).__name__, str(exc), retryable=False)
        except RetryableError as exc:
            await self._failed(
                task,
                type(exc).__name__,
                str(exc),
                retryable=True,
                not_before_s=exc.retry_after_s or 0.0,
            )
        except (TypeError, ValueError) as exc:
            if "JSON serializable" in str(exc) or "Circular reference" in str(exc):
                await self._failed(task, "unserializable_result", str(exc), retryable=False)
            else:
                await self._failed(task, type(exc).__name__, str(exc), retryable=True)
        except asyncio.CancelledError:
            ctx.cancelled.set()
            raise
        except Exception as exc:
            await self._failed(task, type(exc).__name__, str(exc), retryable=True)
        else:
            entry.result = encoded
            self._results.append(entry)
            self._results_ready.set()
            return True
        return False

    async def _report_progress(self, task: Task, progress: float) -> None:
        await self._store.set_progress(task.id, task.attempts, progress)
        await self._changes.progressed(task.id)

    async def _failed(
        self,
        task: Task,
        kind: str,
        message: str,
        retryable: bool,
        timed_out: bool = False,
        not_before_s: float = 0.0,
    ) -> None:
        now = datetime.now(UTC)
        decision = after_failure(task, retryable, timed_out, now, not_before_s=not_before_s)
        if decision.retry_at is not None:
            retried = await self._store.retry(
                task.id, task.attempts, decision.retry_at, kind, message
            )
            if retried is not None:
                await self._dispatcher.send([retried])
                await self._changes.announce([retried])
            return
        assert decision.reason is not None
        await self._end(task, decision.reason, kind, message)

    async def _end(self, task: Task, reason: DeadLetterReason, kind: str, message: str) -> None:
        """FAILED, then the fallback task if the type has one, else a dead letter."""
        fallback = await self._fallback_for(task)
        ended = await self._store.fail(
            task.id, task.attempts, reason.value, kind, message, fallback
        )
        if ended is None:
            return
        failed, fallback_task = ended
        await self._changes.announce([failed], dead_lettered=fallback_task is None)
        if fallback_task is not None:
            await self._dispatcher.send([fallback_task])
            await self._changes.events.publish(
                "task.queued",
                f"task/{fallback_task.id}",
                {
                    "id": str(fallback_task.id),
                    "type": fallback_task.type,
                    "parent_id": str(task.id),
                },
            )
        else:
            log.warning("task dead-lettered", reason=reason.value, error=message)
            await self._changes.events.publish(
                "task.dead_lettered",
                f"task/{task.id}",
                {
                    "id": str(task.id),
                    "type": task.type,
                    "queue": task.queue,
                    "reason": reason.value,
                    "error": message,
                    "version": self._changes.version,
                },
            )

    async def _fallback_for(self, task: Task) -> NewTask | None:
        if not task.fallback_type:
            return None
        fallback_type = (await self._catalog.known()).get(task.fallback_type)
        if fallback_type is None:
            return None
        return NewTask(
            type=fallback_type.name,
            payload=task.payload,
            queue=fallback_type.queue,
            priority=task.priority,
            retry=fallback_type.retry,
            timeout_s=fallback_type.timeout_s,
            run_at=datetime.now(UTC),
            parent_id=task.id,
            labels=task.labels,
            trace_context=task.trace_context,
        )
