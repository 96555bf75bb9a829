"""The bench's own task types: they report when their handlers started, against the time
the client sent the task or the handler before started (same machine, same clock), so
submit->start and a workflow step's start are measured end to end."""

import time
from typing import Any

from services.task_agent.handlers import TaskContext, task


@task("bench.stamp")
async def stamp(payload: Any, ctx: TaskContext) -> Any:
    return {"submit_to_start_ms": (time.time() - payload["sent"]) * 1000}


@task("bench.echo")
async def echo_timed(payload: Any, ctx: TaskContext) -> Any:
    """echo's work (none), reporting when its handler started and, for a chain's step, how
    long after the handler of the step before (whose start its payload carries in "after")."""
    now = time.time()
    after = (payload or {}).get("after")
    return {"started": now, **({"gap_ms": (now - after) * 1000} if after is not None else {})}
