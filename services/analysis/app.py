"""The analysis process: AnalysisService, the durable consumer that keeps history, the
insight rounds, and the retention of history."""

from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import structlog

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from libs.common.db import create_engine
from libs.common.events import Delivery, EventBus, EventConsumer, events_of
from libs.common.lifecycle import AgentState
from libs.common.metrics import follow_consumer
from libs.common.redis_client import Keys, create_redis
from libs.common.service import GrpcApp, Loop
from libs.common.waiting import pause
from services.analysis.analyses import Analyses
from services.analysis.canary import Canaries
from services.analysis.history import Fold, fold
from services.analysis.insights import Insights
from services.analysis.insights_store import InsightStore
from services.analysis.reports import Reports
from services.analysis.retention import Retention
from services.analysis.servicer import AnalysisServicer
from services.analysis.settings import AnalysisSettings
from services.analysis.store import HistoryStore

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "analysis"


def _fold_fresh(deliveries: dict[str, Delivery], fresh: set[str]) -> Fold:
    return fold(events_of([deliveries[m] for m in sorted(fresh)]))


class AnalysisApp(GrpcApp):
    role = "analysis"

    def __init__(self, settings: AnalysisSettings) -> None:
        engine = create_engine(
            settings.database_url,
            pool_size=4,
            prepared_statements=settings.database_prepared_statements,
        )
        history = HistoryStore(engine)
        redis = create_redis(settings.redis_url)
        keys = Keys(settings.redis_prefix)
        self.insights = Insights(
            InsightStore(engine),
            EventBus(redis, keys, source=f"analysis/{settings.instance}"),
            timedelta(seconds=settings.insight_cooldown_s),
        )
        self.analyses = Analyses(settings.analysis_workers, settings.analysis_max_pending)
        super().__init__(
            settings,
            [
                (
                    analysis_pb2_grpc.add_AnalysisServiceServicer_to_server,
                    AnalysisServicer(
                        Reports(history), Canaries(history), self.analyses, self.insights
                    ),
                    analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name,
                )
            ],
            MIGRATIONS,
        )
        self._engine = engine
        self._redis = redis
        self.history = history
        self._settings = settings
        self._retention = Retention(engine)
        self._consumer = EventConsumer(
            self._redis,
            keys,
            group=CONSUMER_GROUP,
            consumer=settings.instance,
            batch=settings.event_batch,
        )

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {
            "history": self._keep_history,
            "insights": self._watch,
            "retention": self._retain,
        }
        if self.metrics_on:
            loops["consumer-standing"] = lambda: follow_consumer(self._consumer, self._stop)
        return loops

    async def _keep_history(self) -> None:
        """Folds every event into the rollups, acknowledging only what was written, so a
        restart resumes where the last one stopped."""
        await self._consumer.ensure_group()
        try:
            while not self._stop.is_set():
                deliveries = await self._consumer.read()
                await self.lifecycle.move(AgentState.ACTIVE if deliveries else AgentState.IDLE)
                by_id = {d.message_id.decode(): d for d in deliveries}
                await self.history.add(
                    list(by_id),
                    partial(_fold_fresh, by_id),
                    datetime.now(UTC),
                )
                self._consumer.ack(deliveries)
        finally:
            await self._consumer.flush()

    async def _watch(self) -> None:
        """An insight round per interval (one replica's, under a lock)."""
        while not self._stop.is_set():
            changes = await self.insights.evaluate(datetime.now(UTC))
            if changes is not None and (changes.opened or changes.resolved):
                log.info(
                    "insights",
                    opened=[(i.kind, i.subject) for i in changes.opened],
                    resolved=[(i.kind, i.subject) for i in changes.resolved],
                )
            await pause(self._stop, self._settings.insight_interval_s)

    async def _retain(self) -> None:
        while not self._stop.is_set():
            now = datetime.now(UTC)
            merged = await self._retention.downsample(
                now - timedelta(seconds=self._settings.rollup_minutes_kept_s)
            )
            deleted = await self._retention.expire(
                now - timedelta(seconds=self._settings.rollup_retention_s)
            )
            if merged or deleted:
                log.info("history retained", merged_into_hours=merged, deleted=deleted)
            await pause(self._stop, self._settings.retention_interval_s)

    async def close(self) -> None:
        self.analyses.close()
        await self._redis.aclose()
        await self._engine.dispose()
