"""Insights on the real analysis service, Postgres and Redis: task events folded into the
rollups, an incident noticed once (one `insight.opened` per subject, the other insights of it
joining), updated while it lasts, resolved after the cool-down; ListInsights pages through
them and refuses bad input."""

import asyncio
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from agentry.events.v1 import events_pb2
from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys, create_redis
from services.analysis.app import AnalysisApp
from services.analysis.insights import Changes
from services.analysis.settings import AnalysisSettings
from tests.secure import channel_to, dev_secrets, security_settings

CHARGE, EMAIL, NIGHTLY = "payments.charge", "email.send", "reports.nightly"


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
        # The test runs the rounds itself.
        insight_interval_s=3600,
        **security_settings(),
    )


def _minute_events(
    type_: str,
    minute: float,
    *,
    ok: int,
    failed: Sequence[str] = (),
    took: float = 0.2,
    lag: float = 0.3,
) -> list[tuple[str, str, dict[str, Any], float]]:
    """One minute of a type's tasks as the task agent announces them: each starts (after
    `lag` in the queue) and succeeds, or fails with the message given."""
    items = []
    outcomes = [("task.succeeded", None)] * ok + [("task.retrying", m) for m in failed]
    for n, (event, error) in enumerate(outcomes):
        # Spread over the minute, and durations that vary a little from task to task.
        start = minute + 1 + 50 * n / len(outcomes)
        duration = took * (1 + 0.3 * math.sin(n + minute))
        data = {
            "id": f"{type_}-{minute}-{n}",
            "type": type_,
            "queue": "default",
            "version": "1.0",
            "agent": f"task_agent/{n % 3}",
            "error": error,
            "run_at": start - lag * (1 + 0.2 * math.cos(n)),
            "started_at": start,
            "finished_at": start + duration,
        }
        items.append(("task.started", f"task/{data['id']}", data, start))
        items.append((event, f"task/{data['id']}", data, start + duration))
    return items


def _queued(type_: str, minute: float, n: int) -> list[tuple[str, str, dict[str, Any], float]]:
    """`n` tasks submitted in a minute, each due at once."""
    items = []
    for i in range(n):
        at = minute + 1 + 50 * i / n
        data = {"id": f"{type_}-{minute}-{i}", "type": type_, "queue": "nightly", "run_at": at}
        items.append(("task.queued", f"task/{data['id']}", data, at))
    return items


async def _publish(bus: EventBus, items: list[tuple[str, str, dict[str, Any], float]]) -> None:
    events = make_events([(e, s, d) for e, s, d, _ in items], bus.source)
    for event, (*_, at) in zip(events, items, strict=True):
        event.time.FromNanoseconds(int(at * 1e9))
    await bus.publish_events(events)


async def _folded(app: AnalysisApp, since: datetime, total: int) -> None:
    deadline = time.monotonic() + 20
    while sum((await app.history.counts_since(since)).values()) < total:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def _round(app: AnalysisApp, now: datetime) -> Changes:
    # The service's own first round (at start) may hold the lock a moment.
    while (changes := await app.insights.evaluate(now)) is None:
        pass
    return changes


def _insight_events(raw: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[events_pb2.Event]:
    return [
        event
        for _, entry in raw
        for event in events_pb2.EventBatch.FromString(entry[b"e"]).events
        if event.type.startswith("insight.")
    ]


async def test_an_incident_is_one_insight_and_one_event_until_it_resolves(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    keys = Keys(redis_prefix)
    bus = EventBus(client, keys, source="task_agent/a")
    app = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await app.start()
    channel = channel_to(app.server.port, "analysis", role="viewer")
    stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
    try:
        now = time.time()
        this_minute = now - now % 60
        first = this_minute - 80 * 60
        # Rounds as if half a minute into this minute: they look at minutes up to the last.
        round_at = datetime.fromtimestamp(this_minute + 30, UTC)
        quiet = []
        for m in range(76):
            minute = first + 60 * m
            rare = ["timeout after 30s"] if m % 4 == 0 else []
            quiet += _minute_events(CHARGE, minute, ok=20, failed=rare)
            quiet += _minute_events(EMAIL, minute, ok=10)
            quiet += _queued(NIGHTLY, minute, 8) + _minute_events(NIGHTLY, minute, ok=8)
        await _publish(bus, quiet)
        since = datetime.fromtimestamp(first, UTC)
        await _folded(app, since, len(quiet))

        # A quiet history: nothing to say.
        changes = await _round(app, round_at)
        assert (changes.opened, changes.resolved) == ([], [])

        # The last four minutes: half the charges fail with an error never seen before, and
        # emails wait two minutes in their queue.
        incident = []
        for m in range(76, 80):
            minute = first + 60 * m
            declined = [f"card declined for order {m}{n}" for n in range(12)]
            incident += _minute_events(CHARGE, minute, ok=12, failed=declined)
            incident += _minute_events(EMAIL, minute, ok=10, lag=120.0)
            # Nightly reports are still submitted; none starts.
            incident += _queued(NIGHTLY, minute, 8)
        await _publish(bus, incident)
        await _folded(app, since, len(quiet) + len(incident))

        async with bus.subscribe() as live:
            opened = await _round(app, round_at)
            kinds = sorted((i.kind, i.subject) for i in opened.opened)
            assert kinds == [
                ("anomaly.failure_rate", CHARGE),
                ("anomaly.queue_lag", EMAIL),
                ("anomaly.queue_lag", NIGHTLY),
                ("pattern.new_fingerprint", CHARGE),
            ]
            announced = [await live.next() for _ in kinds]
        # Three incidents, three alerts: the new error joins the failure burst's.
        assert sorted((e.type, json.loads(e.data)["subject"]) for e in announced) == [
            ("insight.joined", CHARGE),
            ("insight.opened", EMAIL),
            ("insight.opened", CHARGE),
            ("insight.opened", NIGHTLY),
        ]
        by_kind = {json.loads(e.data)["kind"]: json.loads(e.data) for e in announced}
        failing = by_kind["anomaly.failure_rate"]
        assert failing["subject"] == CHARGE and failing["state"] == "open"
        assert failing["evidence"]["value"] == pytest.approx(0.5)
        assert failing["evidence"]["expected"] < 0.05
        new_error = by_kind["pattern.new_fingerprint"]["evidence"]["fingerprints"][0]
        assert new_error["fingerprint"] == "card declined for order <n>"
        assert new_error["count"] == 48
        lags = {json.loads(e.data)["subject"]: json.loads(e.data) for e in announced}
        assert lags[EMAIL]["evidence"]["value"] > 100
        assert lags[NIGHTLY]["evidence"] == {"stalled": True, "due": 24, "started": 0, "minutes": 3}

        # Still going: the same insights, updated; no second event.
        again = await _round(app, round_at + timedelta(seconds=10))
        assert again.opened == [] and len(again.updated) == 4
        stream = keys.event_stream()
        assert len(_insight_events(await client.xrange(stream))) == 4

        # Over gRPC, newest first, a page at a time.
        listed = await stub.ListInsights(analysis_pb2.ListInsightsRequest(subject=CHARGE))
        assert sorted(i.kind for i in listed.insights) == [
            "anomaly.failure_rate",
            "pattern.new_fingerprint",
        ]
        assert {i.state for i in listed.insights} == {"open"}
        first_page = await stub.ListInsights(analysis_pb2.ListInsightsRequest(page_size=2))
        assert len(first_page.insights) == 2 and first_page.next_page_token
        rest = await stub.ListInsights(
            analysis_pb2.ListInsightsRequest(page_size=2, page_token=first_page.next_page_token)
        )
        assert len(rest.insights) == 2 and not rest.next_page_token
        seen = {i.id for i in [*first_page.insights, *rest.insights]}
        assert seen == {json.loads(e.data)["id"] for e in announced}
        evidence = json.loads(rest.insights[0].evidence)
        assert evidence

        for bad, says in (
            (analysis_pb2.ListInsightsRequest(page_token="not-a-token"), "page_token"),
            (analysis_pb2.ListInsightsRequest(page_size=501), "page_size"),
            (analysis_pb2.ListInsightsRequest(state="closed"), "state"),
            (analysis_pb2.ListInsightsRequest(window_s=91 * 86400), "window_s"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListInsights(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")

        # Twenty minutes on, with nothing new: clear for longer than the cool-down.
        later = round_at + timedelta(minutes=20)
        resolved = await _round(app, later)
        assert len(resolved.resolved) == 4 and resolved.opened == []
        events = _insight_events(await client.xrange(stream))
        assert sorted(e.type for e in events) == [
            "insight.joined",
            *["insight.opened"] * 3,
            *["insight.resolved"] * 4,
        ]
        closed = await stub.ListInsights(analysis_pb2.ListInsightsRequest(state="resolved"))
        assert len(closed.insights) == 4
        assert all(i.HasField("resolved_at") for i in closed.insights)
        assert not (
            await stub.ListInsights(analysis_pb2.ListInsightsRequest(state="open"))
        ).insights
    finally:
        await channel.close()
        await app.stop()
        await client.aclose()
