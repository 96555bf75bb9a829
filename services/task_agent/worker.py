"""The task agent's work loop: free slots pull dispatch messages, claims are made in
Postgres with a fencing token, handlers run under their timeout, results are written in
batches, leases are renewed while handlers run."""

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from libs.common.events import EventBus
from services.task_agent.dispatch import Dispatcher
from services.task_agent.handlers import (
    Handler,
    Handlers,
    NonRetryableError,
    TaskContext,
    bound_logger,
)
from services.task_agent.model import DeadLetterReason, NewTask, Task
from services.task_agent.retry import after_failure
from services.task_agent.store import TaskStore
from services.task_agent.tasks import TypeCatalog, publish_changes

log = structlog.get_logger(__name__)


class Worker:
    def __init__(
        self,
        agent_id: str,
        store: TaskStore,
        dispatcher: Dispatcher,
        events: EventBus,
        handlers: Handlers,
        catalog: TypeCatalog,
        concurrency: int,
        lease_s: float,
        read_block_ms: int = 500,
    ) -> None:
        self._agent = agent_id
        self._store = store
        self._dispatcher = dispatcher
        self._events = events
        self._handlers = handlers
        self._catalog = catalog
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._read_block_ms = read_block_ms
        self._running: dict[uuid.UUID, tuple[Task, asyncio.Task[None]]] = {}
        self._cancel_requested: set[uuid.UUID] = set()
        self._slot_free = asyncio.Event()
        self._results: list[tuple[Task, bytes]] = []
        self._results_ready = asyncio.Event()
        self.last_read_at = 0.0

    @property
    def in_hand(self) -> int:
        return len(self._running)

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
                await _first(self._slot_free.wait(), stop.wait())
                continue
            messages = await self._dispatcher.read(queues, self._agent, free, self._read_block_ms)
            self.last_read_at = loop.time()
            if not messages:
                continue
            ids = [m.task_id for m in messages if m.task_id is not None]
            claimed = await self._store.claim(ids, self._agent, self._lease_s) if ids else []
            # Postgres now holds the claim (or said the hint was stale): the message is done.
            await self._dispatcher.ack(messages)
            for task in claimed:
                self._running[task.id] = (task, asyncio.create_task(self._execute(task)))
            await publish_changes(self._events, claimed)

    async def drain(self, grace_s: float) -> None:
        """Lets running handlers finish within `grace_s`, then hands the rest back."""
        pending = [job for _, job in self._running.values()]
        if pending:
            log.info("draining", running=len(pending), grace_s=grace_s)
            await asyncio.wait(pending, timeout=grace_s)
        # A finished job whose result is not yet written is not handed back: the flush below
        # records it (handing it back would refuse the result and run the task again).
        left = [(task, job) for task, job in self._running.values() if not job.done()]
        for _, job in left:
            job.cancel()
        await asyncio.gather(*(job for _, job in left), return_exceptions=True)
        now = datetime.now(UTC)
        handed_back = []
        for task, _ in left:
            back = await self._store.retry(
                task.id, task.attempts, now, "handed_back", "the agent stopped before it finished"
            )
            if back is not None:
                handed_back.append(back)
        await self._dispatcher.dispatch((t.id, t.queue) for t in handed_back)
        await self._flush_results()
        if handed_back:
            log.info("handed back", tasks=len(handed_back))

    async def write_results(self, stop: asyncio.Event) -> None:
        """Writes successful results in batches: whatever finished while the previous
        batch was being written goes in the next statement."""
        while not stop.is_set():
            await _first(self._results_ready.wait(), stop.wait())
            await self._flush_results()

    async def renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _first(asyncio.sleep(self._lease_s / 3), stop.wait())
            held = [(t.id, t.attempts) for t, _ in self._running.values()]
            for task_id in await self._store.heartbeat(held, self._lease_s):
                entry = self._running.get(task_id)
                if entry is not None and task_id not in self._cancel_requested:
                    self._cancel_requested.add(task_id)
                    entry[1].cancel()

    async def _flush_results(self) -> None:
        self._results_ready.clear()
        batch, self._results = self._results, []
        if not batch:
            return
        recorded = await self._store.succeed([(t.id, t.attempts, r) for t, r in batch])
        if len(recorded) < len(batch):
            kept = {t.id for t in recorded}
            for task, _ in batch:
                if task.id not in kept:
                    log.warning("stale result refused", task_id=str(task.id), attempt=task.attempts)
        for task, _ in batch:
            self._release(task.id)
        await publish_changes(self._events, recorded)

    def _release(self, task_id: uuid.UUID) -> None:
        self._running.pop(task_id, None)
        self._cancel_requested.discard(task_id)
        self._slot_free.set()

    async def _execute(self, task: Task) -> None:
        handler = self._handlers.get(task.type)
        try:
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
            result_pending = await self._attempt(task, handler, payload)
        except asyncio.CancelledError:
            if task.id in self._cancel_requested:
                ended = await self._store.finish_cancelled(task.id, task.attempts)
                await publish_changes(self._events, [ended] if ended else [])
                self._release(task.id)
                return
            raise
        except Exception:
            log.exception("task bookkeeping failed", task_id=str(task.id))
            self._release(task.id)
        else:
            if not result_pending:
                self._release(task.id)

    async def _attempt(self, task: Task, handler: Handler, payload: Any) -> bool:
        """Runs one attempt; True when a result waits to be written."""
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
        ctx = TaskContext(
            task_id=str(task.id),
            type=task.type,
            attempt=task.attempts,
            log=bound_logger(str(task.id), task.type, task.attempts),
            _report=lambda p: self._store.set_progress(task.id, task.attempts, p),
        )
        try:
            async with asyncio.timeout(timeout):
                if handler.is_async:
                    result = await handler.fn(payload, ctx)
                else:
                    result = await asyncio.to_thread(handler.fn, payload, ctx)
            encoded = json.dumps(result, separators=(",", ":")).encode()
        except TimeoutError:
            await self._failed(
                task,
                "timeout",
                f"attempt timed out after {timeout:.3f}s",
                retryable=True,
                timed_out=True,
            )
        except NonRetryableError as exc:
            await self._failed(task, type(exc).__name__, str(exc), retryable=False)
        except (TypeError, ValueError) as exc:
            if "JSON serializable" in str(exc) or "Circular reference" in str(exc):
                await self._failed(task, "unserializable_result", str(exc), retryable=False)
            else:
                await self._failed(task, type(exc).__name__, str(exc), retryable=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(task, type(exc).__name__, str(exc), retryable=True)
        else:
            self._results.append((task, encoded))
            self._results_ready.set()
            return True
        return False

    async def _failed(
        self, task: Task, kind: str, message: str, retryable: bool, timed_out: bool = False
    ) -> None:
        now = datetime.now(UTC)
        decision = after_failure(task, retryable, timed_out, now)
        if decision.retry_at is not None:
            retried = await self._store.retry(
                task.id, task.attempts, decision.retry_at, kind, message
            )
            if retried is not None:
                await self._dispatcher.schedule([(task.id, task.queue, decision.retry_at)])
                await publish_changes(self._events, [retried])
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
        await publish_changes(self._events, [failed])
        if fallback_task is not None:
            await self._dispatcher.dispatch([(fallback_task.id, fallback_task.queue)])
        else:
            await self._events.publish(
                "task.dead_lettered",
                f"task/{task.id}",
                {"id": str(task.id), "type": task.type, "reason": reason.value, "error": message},
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
        )


async def _first(*aws: Any) -> None:
    """Waits for the first of `aws` and cancels the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
