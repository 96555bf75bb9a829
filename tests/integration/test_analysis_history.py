"""The analysis agent keeps history from the durable event stream: nothing published while
it was away is missed."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from libs.common.db import create_engine
from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys, create_redis
from services.analysis.app import AnalysisApp
from services.analysis.history import fold
from services.analysis.reports import PRECISION
from services.analysis.settings import AnalysisSettings
from services.analysis.store import HistoryStore
from tests.cohorts import cohort
from tests.secure import channel_to, dev_secrets, security_settings


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


def _task(type_: str, took: float | None = None, error: str | None = None) -> dict:
    now = time.time()
    return {
        "type": type_,
        "queue": "default",
        "error": error,
        "started_at": now - took if took is not None else None,
        "finished_at": now if took is not None else None,
    }


async def _report(
    stub: analysis_pb2_grpc.AnalysisServiceStub, want_total: int, within: float = 10.0
) -> dict[str, analysis_pb2.ReportRow]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        reply = await stub.GetReport(analysis_pb2.GetReportRequest(window_s=600, group_by="type"))
        rows = {row.group: row for row in reply.rows}
        if sum(row.total for row in rows.values()) >= want_total or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_report_by_type_from_task_events(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    bus = EventBus(client, Keys(redis_prefix), source="task_agent/a")
    app = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await app.start()
    channel = channel_to(app.server.port, "analysis", role="viewer")
    stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
    try:
        items = [("task.succeeded", f"task/e{i}", _task("echo", took=0.2)) for i in range(9)]
        items.append(("task.succeeded", "task/e9", _task("echo", took=3.0)))
        items += [
            ("task.retrying", "task/f1", _task("fail", error="order 17 not found")),
            ("task.failed", "task/f1", _task("fail", took=1.0, error="order 18 not found")),
            ("task.dead_lettered", "task/f1", _task("fail", error="order 18 not found")),
            ("task.succeeded", "task/f2", _task("fail", took=1.0)),
            ("task.failed", "task/f3", _task("fail", took=1.0, error="disk /var/x/y full")),
        ]
        # In two rounds, so the second adds to rows the first wrote.
        await bus.publish_events(make_events(items[:5], bus.source))
        await _report(stub, want_total=5)
        await bus.publish_events(make_events(items[5:], bus.source))
        rows = await _report(stub, want_total=13)

        echo, fail = rows["echo"], rows["fail"]
        assert (echo.total, echo.succeeded, echo.failed, echo.success_rate) == (10, 10, 0, 1.0)
        assert echo.p50_s == pytest.approx(0.2, rel=PRECISION)
        assert echo.p99_s == pytest.approx(3.0, rel=PRECISION)
        assert (fail.total, fail.succeeded, fail.failed, fail.dead_letters) == (3, 1, 2, 1)
        assert fail.success_rate == pytest.approx(1 / 3)
        assert fail.retry_rate == pytest.approx(1 / 4)
        assert fail.p50_s == pytest.approx(1.0, rel=PRECISION)
        top = fail.top_errors[0]
        assert (top.fingerprint, top.count) == ("order <n> not found", 2)
        assert top.example == "order 17 not found"
        assert [e.count for e in fail.top_errors] == [2, 1]

        for bad in (
            analysis_pb2.GetReportRequest(window_s=0, group_by="type"),
            analysis_pb2.GetReportRequest(window_s=600, group_by="colour"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetReport(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await app.stop()
        await client.aclose()


async def test_an_entry_delivered_again_after_it_was_written_is_not_counted_twice(
    clean_db: str,
) -> None:
    """A crash between writing the rollups and acknowledging the entry redelivers it."""
    engine = create_engine(clean_db, pool_size=1)
    history = HistoryStore(engine)
    events = make_events([("task.succeeded", "task/1", _task("echo", took=0.5))], "task_agent/a")
    for _ in range(2):
        await history.add(["1-0"], lambda fresh: fold(events), datetime.now(UTC))
    totals = await history.totals_since(datetime.now(UTC) - timedelta(minutes=5), "type")
    assert totals["echo"].counts == {"succeeded": 1}
    assert await history.counts_since(datetime.now(UTC) - timedelta(minutes=5)) == {
        "task.succeeded": 1
    }
    await engine.dispose()


async def test_canary_verdicts_are_answered_and_recorded(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    bus = EventBus(client, Keys(redis_prefix), source="task_agent/a")
    app = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await app.start()
    channel = channel_to(app.server.port, "analysis", role="operator")
    stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
    try:
        # echo: the canary fails a fifth of its tasks. sum: the canary is no worse.
        items = (
            cohort("1.0", "echo", 100, 1, 0.2)
            + cohort("1.1", "echo", 100, 20, 0.2)
            + cohort("2.0", "sum", 100, 1, 0.2)
            + cohort("2.1", "sum", 100, 1, 0.2)
        )
        await bus.publish_events(make_events(items, bus.source))
        await _counts(app, {"task.succeeded": 400 - 23, "task.failed": 23})

        failing = await stub.AnalyzeCanary(
            analysis_pb2.AnalyzeCanaryRequest(
                subject="echo", baseline="1.0", canary="1.1", window_s=600
            )
        )
        fail = failing.analysis
        assert fail.verdict == analysis_pb2.VERDICT_FAIL
        stats = json.loads(fail.statistics)
        assert stats["cohorts"]["canary"]["failed"] == 20
        assert stats["cohorts"]["baseline"]["total"] == 100
        assert stats["error_rate"]["p_value"] < 0.01
        assert stats["error_rate"]["significant"]

        passing = await stub.AnalyzeCanary(
            analysis_pb2.AnalyzeCanaryRequest(
                subject="*", baseline="2.0", canary="2.1", window_s=600
            )
        )
        assert passing.analysis.verdict == analysis_pb2.VERDICT_PASS
        assert json.loads(passing.analysis.statistics)["duration"]["median_ratio"] == pytest.approx(
            1.0
        )

        for made in (fail, passing.analysis):
            again = await stub.GetCanaryAnalysis(analysis_pb2.GetCanaryAnalysisRequest(id=made.id))
            assert again.analysis.verdict == made.verdict
            assert json.loads(again.analysis.statistics) == json.loads(made.statistics)
            assert (again.analysis.baseline, again.analysis.canary) == (made.baseline, made.canary)

        for bad, says in (
            (analysis_pb2.AnalyzeCanaryRequest(baseline="1.0", canary="9.9", window_s=600), "9.9"),
            (
                analysis_pb2.AnalyzeCanaryRequest(baseline="1.0", canary="1.1", window_s=0),
                "window_s",
            ),
            (
                analysis_pb2.AnalyzeCanaryRequest(baseline="1.0", canary="1.1", window_s=8 * 86400),
                "window_s",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.AnalyzeCanary(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetCanaryAnalysis(
                analysis_pb2.GetCanaryAnalysisRequest(id="00000000-0000-0000-0000-000000000000")
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await app.stop()
        await client.aclose()


async def test_canary_verdicts_are_listed_newest_first_a_page_at_a_time(
    clean_db: str, redis_url: str, redis_prefix: str
) -> None:
    client = create_redis(redis_url)
    bus = EventBus(client, Keys(redis_prefix), source="task_agent/a")
    app = AnalysisApp(_settings(clean_db, redis_url, redis_prefix))
    await app.start()
    channel = channel_to(app.server.port, "analysis", role="operator")
    stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
    try:
        items = [
            item
            for version in ("1.0", "1.1")
            for type_ in ("echo", "sum")
            for item in cohort(version, type_, 10, 0, 0.2)
        ]
        await bus.publish_events(make_events(items, bus.source))
        await _counts(app, {"task.succeeded": 40})

        async def analyze(subject: str) -> str:
            made = await stub.AnalyzeCanary(
                analysis_pb2.AnalyzeCanaryRequest(
                    subject=subject, baseline="1.0", canary="1.1", window_s=600
                )
            )
            return made.analysis.id

        async def listed(**request) -> analysis_pb2.ListCanaryAnalysesResponse:
            return await stub.ListCanaryAnalyses(analysis_pb2.ListCanaryAnalysesRequest(**request))

        made = [await analyze(subject) for subject in ("echo", "*", "sum", "echo", "*")]
        newest = made[::-1]

        pages, token = [], ""
        while True:
            page = await listed(page_size=2, page_token=token)
            pages.append([a.id for a in page.analyses])
            if not (token := page.next_page_token):
                break
        assert pages == [newest[:2], newest[2:4], newest[4:]]

        # A verdict made between two pages neither repeats nor shifts the next one.
        first = await listed(page_size=2)
        later = await analyze("*")
        second = await listed(page_size=2, page_token=first.next_page_token)
        assert [a.id for a in second.analyses] == newest[2:4]

        everything = await listed()
        assert [a.id for a in everything.analyses] == [later, *newest]
        assert everything.next_page_token == ""
        oldest = everything.analyses[-1]
        assert (oldest.subject, oldest.baseline, oldest.canary) == ("echo", "1.0", "1.1")
        assert oldest.window_s == 600 and oldest.verdict == analysis_pb2.VERDICT_INCONCLUSIVE
        assert json.loads(oldest.statistics)["cohorts"]["baseline"]["total"] == 10

        assert [a.id for a in (await listed(subject="echo")).analyses] == [made[3], made[0]]
        assert [a.id for a in (await listed(subject="*")).analyses] == [later, made[4], made[1]]
        assert not (await listed(subject="colour")).analyses

        for bad, says in (
            ({"page_token": "not-a-token"}, "page_token"),
            ({"page_size": -1}, "page_size"),
            ({"page_size": 501}, "page_size"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await listed(**bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")
    finally:
        await channel.close()
        await app.stop()
        await client.aclose()
