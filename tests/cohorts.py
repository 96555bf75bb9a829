"""Made-up cohorts for canary analyses: the finished tasks a task agent of some version would
have published events for."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from dev.stack import Stack
from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys, create_redis

Item = tuple[str, str, dict[str, Any]]


def cohort(version: str, type_: str, n: int, failures: int, took: float = 0.2) -> list[Item]:
    """`n` finished tasks of `type_` run by `version`, the first `failures` of them failed."""
    now = time.time()
    return [
        (
            "task.failed" if i < failures else "task.succeeded",
            f"task/{type_}-{version}-{i}",
            {
                "type": type_,
                "queue": "default",
                "version": version,
                "error": "boom" if i < failures else None,
                "started_at": now - took,
                "finished_at": now,
            },
        )
        for i in range(n)
    ]


def publish_to(stack: Stack, items: list[Item]) -> None:
    """Onto a running platform's event stream, as a task agent publishes them. In a thread of
    its own: the caller may be inside another event loop (Playwright's)."""

    async def publish() -> None:
        # The prefix and Redis the platform's services were given.
        client = create_redis(stack._env["AGENTRY_REDIS_URL"])
        bus = EventBus(client, Keys(stack._env["AGENTRY_REDIS_PREFIX"]), "task_agent/test")
        try:
            await bus.publish_events(make_events(items, bus.source))
        finally:
            await client.aclose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result()


def analyze(client: httpx.Client, body: dict[str, Any], within_s: float = 30.0) -> dict[str, Any]:
    """POST /v1/canary-analyses once the analysis service has read the cohorts' events (until
    then it refuses: no task events from the version)."""
    deadline = time.monotonic() + within_s
    while (reply := client.post("/v1/canary-analyses", json=body)).status_code == 400:
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.2)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())
