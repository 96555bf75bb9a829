"""The task agent process: TaskService, the worker, the reconciler, its lifecycle."""

import asyncio
from pathlib import Path

import httpx
import structlog

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.crypto import keyring_from_settings
from libs.common.db import create_engine
from libs.common.events import EventBus
from libs.common.lifecycle import AgentState
from libs.common.redis_client import Keys, create_redis
from libs.common.security import load_security
from libs.common.service import GrpcApp, Loop
from libs.common.waiting import pause
from services.task_agent import metrics
from services.task_agent.analysis_client import AnalysisClient
from services.task_agent.cache import TaskCache
from services.task_agent.changes import TaskChanges
from services.task_agent.dead_letter_store import DeadLetterStore
from services.task_agent.dispatch import Dispatcher
from services.task_agent.handlers import Handlers, Resources
from services.task_agent.limits import ConcurrencySlots, RateLimiter
from services.task_agent.reconciler import Reconciler
from services.task_agent.servicer import TaskServicer
from services.task_agent.settings import TaskAgentSettings
from services.task_agent.store import TaskStore
from services.task_agent.tasks import Tasks, TypeCatalog
from services.task_agent.type_store import TypeStore
from services.task_agent.worker import Worker

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# A consumer with free slots that has not read for this long is not healthy.
STALLED_AFTER_S = 10.0
ADVERTISE_EVERY_S = 30.0
BACKLOG_EVERY_S = 5.0


class TaskAgentApp(GrpcApp):
    role = "task_agent"

    def __init__(self, settings: TaskAgentSettings) -> None:
        # First: without its keys the agent must not start, nor open anything.
        self.keyring = keyring_from_settings(settings)
        self._engine = create_engine(
            settings.database_url, prepared_statements=settings.database_prepared_statements
        )
        self._redis = create_redis(settings.redis_url)
        self._http = httpx.AsyncClient(timeout=30.0, follow_redirects=False)
        security = load_security(settings)
        self._analysis = (
            AnalysisClient(settings.analysis_service_address, security.identity)
            if settings.analysis_service_address
            else None
        )
        keys = Keys(settings.redis_prefix)
        self.handlers = Handlers.from_modules(settings.handler_modules)
        self.store = TaskStore(self._engine, self.keyring)
        self.types = TypeStore(self._engine)
        self.dispatcher = Dispatcher(self._redis, keys, settings.low_priority_first_every)
        self.catalog = TypeCatalog(self.types, self.handlers.types)
        agent_id = f"{self.role}/{settings.instance}"
        self.events = EventBus(self._redis, keys, source=agent_id)
        self.changes = TaskChanges(
            self._redis,
            self.events,
            TaskCache(self._redis, keys, settings.task_cache_ttl_s, self.keyring),
            self.keyring,
            settings.version,
        )
        self.worker = Worker(
            agent_id,
            self.store,
            self.dispatcher,
            self.changes,
            self.handlers,
            self.catalog,
            Resources(
                http=self._http,
                limiter=RateLimiter(self._redis, keys),
                secrets=settings.webhook_secrets,
                allow_private_networks=settings.http_allow_private_networks,
                keyring=self.keyring,
                analysis=self._analysis,
            ),
            ConcurrencySlots(self._redis, keys),
            settings.concurrency,
            settings.lease_s,
        )
        metrics.watch_slots(lambda: self.worker.in_hand, settings.concurrency)
        self.tasks = Tasks(
            self.store,
            DeadLetterStore(self._engine, self.keyring),
            self.dispatcher,
            self.changes,
            self.catalog,
            settings.max_payload_bytes,
            eager=self.worker if settings.eager_execution else None,
        )
        self.worker.record_results = self.tasks.record_results
        super().__init__(
            settings,
            [
                (
                    tasks_pb2_grpc.add_TaskServiceServicer_to_server,
                    TaskServicer(self.tasks),
                    tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
                )
            ],
            MIGRATIONS,
            security,
        )
        self.reconciler = Reconciler(
            self.store,
            self.dispatcher,
            self.changes,
            self.handlers.queues,
            settings.reconcile_interval_s,
            settings.redispatch_after_s,
        )
        self._renewal: asyncio.Task[None] | None = None

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {
            "worker": lambda: self.worker.run(self._stop),
            "results": lambda: self.worker.write_results(self._stop),
            "promoter": lambda: self.reconciler.promote_delayed(self._stop),
            "reconciler": lambda: self.reconciler.run(self._stop),
            "watch": self._watch,
        }
        if self.metrics_on:
            loops["backlog"] = self._measure_backlog
        return loops

    async def _measure_backlog(self) -> None:
        """The queues' depth and oldest age, read from Redis every few seconds (a scrape
        does not wait on Redis). Every agent serving a queue reports the same figures."""
        queues = self.handlers.queues
        while not self._stop.is_set():
            metrics.show_backlog(await self.dispatcher.backlog(queues))
            await pause(self._stop, BACKLOG_EVERY_S)

    def task_types(self) -> list[str]:
        return [t.name for t in self.handlers.types]

    def load(self) -> float:
        return self.worker.load

    async def prepare(self) -> None:
        await self.types.advertise(self.handlers.types, self.agent_id)
        # Leases are renewed through the drain, so it is not one of the loops.
        self._renewal = asyncio.create_task(self.worker.renew_leases(), name="leases")

    async def _watch(self) -> None:
        """Moves ACTIVE/IDLE with the work in hand, keeps advertising the types, and stops
        answering SERVING if the consumer has stopped reading (a stalled agent is not a
        healthy one just because its process lives)."""
        loop = asyncio.get_running_loop()
        advertised_at = loop.time()
        while not self._stop.is_set():
            busy = self.worker.in_hand > 0
            await self.lifecycle.move(AgentState.ACTIVE if busy else AgentState.IDLE)
            await self.server.set_serving(not self.worker.stalled(loop.time(), STALLED_AFTER_S))
            if loop.time() - advertised_at > ADVERTISE_EVERY_S:
                await self.types.advertise(self.handlers.types, self.agent_id)
                advertised_at = loop.time()
            await pause(self._stop, 1.0)

    async def drain(self) -> None:
        await self.worker.drain(self.settings.shutdown_grace_s)
        if self._renewal is not None:
            await self._renewal
        await self.types.withdraw(self.agent_id)

    async def close(self) -> None:
        await self._http.aclose()
        if self._analysis is not None:
            await self._analysis.close()
        await self._redis.aclose()
        await self._engine.dispose()
