"""How long history is kept, and getting it back: old per-minute rollups become hourly without
changing what a report over them says, rollups past the retention are deleted, and after the
analysis schema's rows are lost, replaying the durable event stream from its start gives the
same report."""

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from libs.common.db import create_engine
from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys, create_redis
from services.analysis.app import CONSUMER_GROUP, AnalysisApp
from services.analysis.history import fold
from services.analysis.reports import GROUPS, GroupTotals
from services.analysis.retention import Retention, hour_of
from services.analysis.settings import AnalysisSettings
from services.analysis.store import HistoryStore
from tests.secure import channel_to, dev_secrets, security_settings

LOST = (
    "analysis.event_rollups, analysis.task_rollups, analysis.error_rollups,"
    " analysis.queue_lag_rollups, analysis.agent_rollups, analysis.applied_messages"
)


def _items(type_: str, at: float, n: int, fail_every: int) -> list[tuple[str, str, Any, float]]:
    items = []
    for i in range(n):
        start = at + i
        failed = i % fail_every == 0
        data = {
            "id": f"{type_}-{at}-{i}",
            "type": type_,
            "queue": "default",
            "version": "1.0",
            "agent": f"task_agent/{i % 2}",
            "error": f"order {i} not found" if failed else None,
            "run_at": start - 0.5 * (1 + i % 3),
            "started_at": start,
            "finished_at": start + 0.1 * (1 + math.sin(i)) + 0.05,
        }
        items.append(("task.started", f"task/{data['id']}", data, start))
        outcome = "task.failed" if failed else "task.succeeded"
        items.append((outcome, f"task/{data['id']}", data, data["finished_at"]))
    return items


def _events(items: list[tuple[str, str, Any, float]]) -> list[Any]:
    events = make_events([(e, s, d) for e, s, d, _ in items], "task_agent/a")
    for event, (*_, at) in zip(events, items, strict=True):
        event.time.FromNanoseconds(int(at * 1e9))
    return events


def _shown(groups: dict[str, GroupTotals]) -> dict[str, tuple[Any, ...]]:
    """What a report shows of each group: counts, durations, errors (in any order)."""
    return {
        name: (t.counts, t.histogram, sorted(t.errors, key=lambda e: e.fingerprint))
        for name, t in groups.items()
    }


async def test_old_minutes_become_hours_and_reports_over_them_stay_the_same(
    clean_db: str,
) -> None:
    engine = create_engine(clean_db, pool_size=2)
    history, retention = HistoryStore(engine), Retention(engine)
    now = datetime.now(UTC)
    three_hours_ago = hour_of(now) - timedelta(hours=3)
    items = []
    for hour in (three_hours_ago, three_hours_ago + timedelta(hours=1)):
        for minute in (5, 17, 42):
            at = (hour + timedelta(minutes=minute)).timestamp()
            items += _items("render", at, 6, fail_every=3)
            items += _items("mail", at, 4, fail_every=5)
    # At a minute's start, so that its six tasks fall in that one minute.
    recent = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    items += _items("render", recent.timestamp(), 6, fail_every=3)
    await history.add(["1-0"], lambda fresh: fold(_events(items)), now)
    since = three_hours_ago - timedelta(minutes=1)
    before = {g: _shown(await history.totals_since(since, g)) for g in GROUPS}

    merged = await retention.downsample(now - timedelta(minutes=30))
    assert merged > 0
    assert {g: _shown(await history.totals_since(since, g)) for g in GROUPS} == before
    with psycopg.connect(clean_db, autocommit=True) as conn:
        minutes = conn.execute(
            "SELECT DISTINCT minute FROM analysis.task_rollups ORDER BY minute"
        ).fetchall()
        lags = conn.execute(
            "SELECT minute, sum(count) FROM analysis.queue_lag_rollups GROUP BY minute"
            " ORDER BY minute"
        ).fetchall()
    # Two hourly rows and the recent minute's.
    assert [m for (m,) in minutes][:2] == [three_hours_ago, three_hours_ago + timedelta(hours=1)]
    assert len(minutes) == 3
    assert [n for _, n in lags] == [30, 30, 6]
    # Merging again finds nothing more to merge.
    assert await retention.downsample(now - timedelta(minutes=30)) == 0

    # Past the retention: gone.
    await retention.expire(three_hours_ago + timedelta(minutes=30))
    after = await history.totals_since(since, "type")
    assert after["render"].counts["succeeded"] == before["type"]["render"][0]["succeeded"] - 12
    await engine.dispose()


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


async def _report(app: AnalysisApp, want_total: int) -> list[analysis_pb2.ReportRow]:
    channel = channel_to(app.server.port, "analysis", role="viewer")
    stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
    deadline = time.monotonic() + 20
    try:
        while True:
            reply = await stub.GetReport(
                analysis_pb2.GetReportRequest(window_s=3600, group_by="type")
            )
            if sum(r.total for r in reply.rows) >= want_total:
                return list(reply.rows)
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.05)
    finally:
        await channel.close()


async def test_history_lost_is_rebuilt_from_the_event_stream(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    keys = Keys(redis_prefix)
    bus = EventBus(client, keys, source="task_agent/a")
    app = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await app.start()
    start = time.time() - 1200
    finished = 0
    for batch in range(5):
        items = _items("render", start + 200 * batch, 20, fail_every=4)
        items += _items("mail", start + 200 * batch + 30, 10, fail_every=7)
        finished += 30
        await bus.publish_events(_events(items))
    first = await _report(app, finished)
    await app.stop()

    # The rows are lost; the stream is not.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {LOST}")
    await client.xgroup_setid(keys.event_stream(), CONSUMER_GROUP, "0")

    rebuilt = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await rebuilt.start()
    try:
        assert await _report(rebuilt, finished) == first
    finally:
        await rebuilt.stop()
        await client.aclose()
