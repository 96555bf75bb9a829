"""Every change of a task leaves through one door: the cache gets the new state, the event
stream and pub/sub get the event (carrying the trace of the task's submission), and the
metrics count it. The end of a workflow step's task carries its result, sealed: the
orchestrator advances the run from the event alone."""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as redis

from libs.common.crypto import Keyring
from libs.common.events import EventBus, make_events, sealed_result_aad
from services.task_agent.cache import TaskCache
from services.task_agent.metrics import count_changes
from services.task_agent.model import Task, TaskState


def task_event_data(task: Task) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "type": task.type,
        "state": task.state.value,
        "queue": task.queue,
        "attempts": task.attempts,
        "agent": task.agent,
        "error": task.error_message,
        "reason": task.error_reason,
        "labels": task.labels,
        "created_at": task.created_at.timestamp(),
        # When the current attempt became due: the analysis service's queue lag is the
        # time from it to the start.
        "run_at": task.run_at.timestamp(),
        "started_at": task.started_at.timestamp() if task.started_at else None,
        "finished_at": task.finished_at.timestamp() if task.finished_at else None,
    }


EVENT_BY_STATE = {
    TaskState.QUEUED: "task.queued",
    TaskState.RUNNING: "task.started",
    TaskState.RETRYING: "task.retrying",
    TaskState.SUCCEEDED: "task.succeeded",
    TaskState.FAILED: "task.failed",
    TaskState.CANCELLED: "task.cancelled",
}
# Results up to this size ride in the succeeded event of a task labelled with a workflow
# run; a larger one is read back by the orchestrator.
RESULT_IN_EVENT_BYTES = 8 * 1024


class TaskChanges:
    def __init__(
        self,
        client: redis.Redis,
        events: EventBus,
        cache: TaskCache,
        keyring: Keyring,
        version: str,
    ) -> None:
        self._redis = client
        self.events = events
        self.cache = cache
        self._keyring = keyring
        # The agent's version travels with every event: reports and canary verdicts compare
        # versions.
        self.version = version

    async def announce(
        self,
        changed: Sequence[Task] = (),
        dead_lettered: bool = False,
        continued: Mapping[uuid.UUID, Sequence[uuid.UUID]] | None = None,
        created: Sequence[Task] = (),
    ) -> None:
        """Cache writes and events in one round trip. `dead_lettered`: the failed tasks
        among `changed` went to the dead letters. `continued`: the tasks each succeeded
        task submitted as its continuations, which its event names. `created`: tasks just
        created (announced first), of which no cached copy can exist to update: the first
        read fills the cache."""
        if not changed and not created:
            return
        count_changes(created, True, False)
        count_changes(changed, False, dead_lettered)
        everything = [*created, *changed]
        items = []
        for t in everything:
            data = {**task_event_data(t), "version": self.version}
            if continued and t.id in continued:
                data["continued"] = [str(task_id) for task_id in continued[t.id]]
            items.append((EVENT_BY_STATE[t.state], f"task/{t.id}", data))
        events = make_events(items, self.events.source)
        # A task's events continue its submission's trace, wherever they are published
        # from (a batch of results, the reconciler): its consumers join that trace.
        for event, task in zip(events, everything, strict=True):
            if task.trace_context:
                event.trace_context.clear()
                event.trace_context.update(task.trace_context)
            if (
                task.state == TaskState.SUCCEEDED
                and "run" in task.labels
                and task.result is not None
                and len(task.result) <= RESULT_IN_EVENT_BYTES
            ):
                event.sealed_result = self._keyring.encrypt(task.result, sealed_result_aad(task.id))
        async with self._redis.pipeline(transaction=False) as pipe:
            self.cache.queue_put(pipe, changed)
            self.events.queue_events(pipe, events)
            replies = await pipe.execute(raise_on_error=False)
        published = next((r for r in replies[len(changed) :] if isinstance(r, Exception)), None)
        if published is not None:
            raise published
        await self.cache.settle_put(changed, replies[: len(changed)])

    async def progressed(self, task_id: uuid.UUID) -> None:
        """Progress is not worth an event; the cached copy is dropped instead."""
        await self.cache.forget(task_id)
