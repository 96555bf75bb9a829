"""Task types every agent serves."""

import asyncio
from typing import Any

from services.task_agent.handlers import NonRetryableError, RetryableError, TaskContext, task
from services.task_agent.model import RetryPolicy


@task("echo")
async def echo(payload: Any, ctx: TaskContext) -> Any:
    return payload


@task("sleep", timeout_s=3600)
async def sleep(payload: Any, ctx: TaskContext) -> Any:
    seconds = float((payload or {}).get("seconds", 0))
    await asyncio.sleep(seconds)
    return {"slept_s": seconds}


@task("fail", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=1.0))
async def fail(payload: Any, ctx: TaskContext) -> Any:
    """Fails its first `times` attempts, then succeeds."""
    payload = payload or {}
    times = int(payload.get("times", 1))
    if ctx.attempt <= times:
        message = str(payload.get("message", f"failing attempt {ctx.attempt} of {times}"))
        if payload.get("retryable", True):
            raise RetryableError(message)
        raise NonRetryableError(message)
    return {"succeeded_on_attempt": ctx.attempt}
