"""Waiting on several things at once, the way every background loop does."""

import asyncio
from collections.abc import Awaitable
from typing import Any


async def first_of(*aws: Awaitable[Any]) -> None:
    """Returns when the first of `aws` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps `seconds`, or less if `stop` is set meanwhile."""
    await first_of(stop.wait(), asyncio.sleep(seconds))
