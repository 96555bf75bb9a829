"""The analysis task types every agent serves, run by AnalysisService.RunAnalysis (their
input and output shapes are in services/analysis/analyses.py and the README):

- `analysis.describe`: summary statistics of numbers;
- `analysis.anomalies`: the anomalous points of a numeric series, with scores;
- `analysis.patterns`: text lines (log lines) grouped by fingerprint, with counts.

As task types they are workflow steps like any other, with the task machinery's retries,
timeouts, idempotency and durability, and the website can submit them as plain tasks. Bad
input fails the task at once with the analysis service's message; the analysis service
being away or busy is retried."""

import json
from typing import Any

from libs.common import errors
from services.task_agent.handlers import NonRetryableError, RetryableError, TaskContext, task
from services.task_agent.model import RetryPolicy

_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=10)
_TIMEOUT_S = 60


async def _run(kind: str, payload: Any, ctx: TaskContext) -> Any:
    client = ctx.resources.analysis
    if client is None:
        raise NonRetryableError(
            f"{kind}: this agent has no analysis service (AGENTRY_ANALYSIS_SERVICE_ADDRESS)"
        )
    try:
        output = await client.run(kind, json.dumps(payload, separators=(",", ":")).encode())
    except errors.InvalidArgument as exc:
        raise NonRetryableError(str(exc)) from None
    except errors.PermissionDenied as exc:
        raise NonRetryableError(f"{kind}: the analysis service refused this agent: {exc}") from None
    except errors.ResourceExhausted as exc:
        raise RetryableError(f"{kind}: {exc}", retry_after_s=exc.retry_after_s) from None
    except errors.AgentryError as exc:
        raise RetryableError(f"{kind}: the analysis service did not answer: {exc}") from None
    return json.loads(output)


@task("analysis.describe", timeout_s=_TIMEOUT_S, retry=_RETRY)
async def describe(payload: Any, ctx: TaskContext) -> Any:
    return await _run("analysis.describe", payload, ctx)


@task("analysis.anomalies", timeout_s=_TIMEOUT_S, retry=_RETRY)
async def anomalies(payload: Any, ctx: TaskContext) -> Any:
    return await _run("analysis.anomalies", payload, ctx)


@task("analysis.patterns", timeout_s=_TIMEOUT_S, retry=_RETRY)
async def patterns(payload: Any, ctx: TaskContext) -> Any:
    return await _run("analysis.patterns", payload, ctx)
