"""The bench's own task type: it reports when its handler started, against the time the
client sent it (same machine, same clock), so submit->start is measured end to end."""

import time
from typing import Any

from services.task_agent.handlers import TaskContext, task


@task("bench.stamp")
async def stamp(payload: Any, ctx: TaskContext) -> Any:
    return {"submit_to_start_ms": (time.time() - payload["sent"]) * 1000}
