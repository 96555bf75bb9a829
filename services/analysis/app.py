"""The analysis process: AnalysisService, and the durable consumer that keeps history.
Insights and analysis steps answer UNIMPLEMENTED until the analysis issue
(#7) builds them."""

from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import structlog

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from libs.common.db import create_engine
from libs.common.events import Delivery, EventConsumer, events_of
from libs.common.lifecycle import AgentState
from libs.common.redis_client import Keys, create_redis
from libs.common.service import GrpcApp, Loop
from services.analysis.canary import Canaries
from services.analysis.history import Fold, fold
from services.analysis.reports import Reports
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
        engine = create_engine(settings.database_url, pool_size=4)
        history = HistoryStore(engine)
        super().__init__(
            settings,
            [
                (
                    analysis_pb2_grpc.add_AnalysisServiceServicer_to_server,
                    # The RPCs it does not build yet are the generated base's UNIMPLEMENTED.
                    AnalysisServicer(Reports(history), Canaries(history)),  # type: ignore[abstract]
                    analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name,
                )
            ],
            MIGRATIONS,
        )
        self._engine = engine
        self._redis = create_redis(settings.redis_url)
        self.history = history
        self._consumer = EventConsumer(
            self._redis,
            Keys(settings.redis_prefix),
            group=CONSUMER_GROUP,
            consumer=settings.instance,
            batch=settings.event_batch,
        )

    def loops(self) -> dict[str, Loop]:
        return {"history": self._keep_history}

    async def _keep_history(self) -> None:
        """Folds every event into the rollups, acknowledging only what was written, so a
        restart resumes where the last one stopped."""
        await self._consumer.ensure_group()
        while not self._stop.is_set():
            deliveries = await self._consumer.read()
            await self.lifecycle.move(AgentState.ACTIVE if deliveries else AgentState.IDLE)
            by_id = {d.message_id.decode(): d for d in deliveries}
            await self.history.add(
                list(by_id),
                partial(_fold_fresh, by_id),
                datetime.now(UTC),
            )
            await self._consumer.ack(deliveries)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._engine.dispose()
