"""Group commit: the callers of one operation served by batches."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Calls made while batches are under way wait, and go together in the next batch:
    under load, one transaction and one SubmitTasks serve many callers (as a database's
    group commit does); alone, a caller waits for nothing. Two batches run at once, so one
    is gathered and written while the other waits on Postgres or TaskService. A batch
    answers each item, or an exception for that caller alone."""

    AT_ONCE = 2

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[R | Exception]]]) -> None:
        self._run_batch = run_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drains: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._drains) < self.AT_ONCE:
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                results = await self._run_batch([item for item, _ in batch])
            except Exception as exc:  # each caller sees it, as if it had gone alone
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
