"""Keeps Redis in step with Postgres: delayed work moves onto its stream when due, and
whatever Postgres says is due but no stream carries (Redis lost its data, an agent died
holding a lease, a dispatch was lost between commit and XADD) is dispatched again."""

import asyncio
from collections.abc import Sequence

import structlog

from libs.common.waiting import first_of, pause
from services.task_agent.changes import TaskChanges
from services.task_agent.dispatch import Dispatcher
from services.task_agent.store import TaskStore

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(
        self,
        store: TaskStore,
        dispatcher: Dispatcher,
        changes: TaskChanges,
        queues: Sequence[str],
        interval_s: float,
        redispatch_after_s: float,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._changes = changes
        self._queues = list(queues)
        self._interval_s = interval_s
        self._redispatch_after_s = redispatch_after_s
        self._wake = asyncio.Event()
        dispatcher.on_scheduled = self._wake.set

    async def promote_delayed(self, stop: asyncio.Event) -> None:
        """Sleeps until the earliest delayed task is due, or this agent delays something,
        or a second passed (other agents delay work too); then moves what is due onto the
        streams."""
        while not stop.is_set():
            self._wake.clear()
            await self._dispatcher.promote_due(self._queues)
            wait = await self._dispatcher.next_due_in(self._queues)
            wait = 1.0 if wait is None else min(wait, 1.0)
            await first_of(stop.wait(), self._wake.wait(), asyncio.sleep(wait))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile failed; trying again next round")
            await pause(stop, self._interval_s)

    async def reconcile_once(self, batch: int = 1000) -> int:
        expired = await self._store.expire_leases(batch)
        if expired:
            log.warning("leases expired; tasks are due again", tasks=len(expired))
            await self._changes.announce(expired)
        due = await self._store.due_for_dispatch(self._redispatch_after_s, batch)
        if due:
            log.info("re-dispatching from postgres", tasks=len(due))
            await self._dispatcher.send(due)
        return len(due)
