"""The analysis agent keeps history from the durable event stream: nothing published while
it was away is missed."""

import asyncio
from datetime import UTC, datetime, timedelta

from libs.common.events import EventBus
from libs.common.redis_client import Keys, create_redis
from services.analysis.app import AnalysisApp
from services.analysis.settings import AnalysisSettings
from tests.secure import dev_secrets, security_settings


def _settings(database_url: str, redis_url: str, prefix: str) -> AnalysisSettings:
    return AnalysisSettings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        grpc_port=0,
        migrate_on_start=False,
        instance="analysis-test",
        log_format="console",
        tls_dir=dev_secrets().tls_dir("analysis"),
        **security_settings(),
    )


async def _counts(app: AnalysisApp, expected: dict[str, int], within: float = 10.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    since = datetime.now(UTC) - timedelta(minutes=5)
    while (counts := await app.history.counts_since(since)) != expected:
        assert loop.time() < deadline, counts
        await asyncio.sleep(0.05)
    return counts


async def test_events_published_while_analysis_was_down_are_counted(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    bus = EventBus(client, Keys(redis_prefix), source="test")
    first = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await first.start()
    await bus.publish("task.succeeded", "task/1")
    await bus.publish("task.failed", "task/2")
    await _counts(first, {"task.succeeded": 1, "task.failed": 1})
    await first.stop()

    await bus.publish("task.succeeded", "task/3")
    second = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await second.start()
    try:
        await _counts(second, {"task.succeeded": 2, "task.failed": 1})
    finally:
        await second.stop()
        await client.aclose()
