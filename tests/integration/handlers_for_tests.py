"""Task types of the tests: shared limits, blocking and CPU-bound handlers, and faults."""

import asyncio
import time
from pathlib import Path
from typing import Any

from services.task_agent.handlers import NonRetryableError, TaskContext, task


@task("limited.rate", rate_limit_per_s=4)
async def rate_limited(payload: Any, ctx: TaskContext) -> Any:
    return {"started": time.time()}


@task("limited.slots", concurrency_limit=2)
async def slot_limited(payload: Any, ctx: TaskContext) -> Any:
    started = time.time()
    await asyncio.sleep(float(payload.get("seconds", 0.2)))
    return {"started": started, "ended": time.time()}


@task("blocking.sleep")
def blocking_sleep(payload: Any, ctx: TaskContext) -> Any:
    """A plain function: runs in a thread, and can only notice cancellation."""
    deadline = time.monotonic() + float(payload.get("seconds", 0.1))
    while time.monotonic() < deadline:
        if ctx.cancelled.is_set():
            return {"cancelled": True}
        time.sleep(0.01)
    return {"slept": True}


@task("cpu.sum_squares", process=True)
def sum_squares(payload: Any) -> Any:
    """CPU-bound: runs in the agent's process pool."""
    import os

    return {"sum": sum(i * i for i in range(int(payload["n"]))), "pid": os.getpid()}


@task("needs.file")
def needs_file(payload: Any, ctx: TaskContext) -> Any:
    """Fails for good until the file it names exists: an outside fault fixed by hand."""
    if not Path(payload["path"]).exists():
        raise NonRetryableError(f"{payload['path']} is missing")
    return {"found": payload["path"]}
