"""The task agent process: TaskService, the worker, the reconciler, its lifecycle."""

import asyncio
import contextlib
from pathlib import Path

import structlog

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.db import create_engine
from libs.common.events import EventBus
from libs.common.grpc_server import GrpcServer
from libs.common.lifecycle import SERVING_STATES, AgentState, Lifecycle
from libs.common.migrations import upgrade
from libs.common.redis_client import Keys, create_redis
from services.task_agent.dispatch import Dispatcher
from services.task_agent.handlers import Handlers
from services.task_agent.reconciler import Reconciler
from services.task_agent.servicer import TaskServicer
from services.task_agent.settings import TaskAgentSettings
from services.task_agent.store import TaskStore
from services.task_agent.tasks import Tasks, TypeCatalog
from services.task_agent.worker import Worker

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
ROLE = "task_agent"


class TaskAgentApp:
    def __init__(self, settings: TaskAgentSettings) -> None:
        self.settings = settings
        self.agent_id = f"{ROLE}/{settings.instance}"
        self.lifecycle = Lifecycle()
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._engine = create_engine(settings.database_url)
        self._redis = create_redis(settings.redis_url)
        keys = Keys(settings.redis_prefix)
        self.handlers = Handlers.from_modules(settings.handler_modules)
        self.store = TaskStore(self._engine)
        self.dispatcher = Dispatcher(self._redis, keys)
        self.events = EventBus(self._redis, keys, source=self.agent_id)
        self.catalog = TypeCatalog(self.store, self.handlers.types)
        self.tasks = Tasks(
            self.store, self.dispatcher, self.events, self.catalog, settings.max_payload_bytes
        )
        self.worker = Worker(
            self.agent_id,
            self.store,
            self.dispatcher,
            self.events,
            self.handlers,
            self.catalog,
            settings.concurrency,
            settings.lease_s,
        )
        self.reconciler = Reconciler(
            self.store,
            self.dispatcher,
            self.handlers.queues,
            settings.reconcile_interval_s,
            settings.redispatch_after_s,
        )
        self.server = GrpcServer(
            settings,
            [
                (
                    tasks_pb2_grpc.add_TaskServiceServicer_to_server,
                    TaskServicer(self.tasks),
                    tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
                )
            ],
        )
        self.lifecycle.on_change(self._report_health)

    async def _report_health(self, state: AgentState) -> None:
        await self.server.set_serving(state in SERVING_STATES)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await asyncio.to_thread(upgrade, self.settings.database_url, MIGRATIONS)
        await self.server.start()
        await self.store.advertise(self.handlers.types, self.agent_id)
        await self.lifecycle.move(AgentState.INITIALIZED)
        for loop in (
            self.worker.run(self._stop),
            self.worker.write_results(self._stop),
            self.worker.renew_leases(self._stop),
            self.reconciler.promote_delayed(self._stop),
            self.reconciler.run(self._stop),
            self._watch(),
        ):
            self._loops.append(asyncio.create_task(loop))
        log.info(
            "task agent started", port=self.server.port, types=[t.name for t in self.handlers.types]
        )

    async def _watch(self) -> None:
        """Moves ACTIVE/IDLE with the work in hand, keeps advertising the types, and stops
        answering SERVING if the consumer has stopped reading (a stalled agent is not a
        healthy one just because its process lives)."""
        loop = asyncio.get_running_loop()
        stalled_after = 10.0
        while not self._stop.is_set():
            busy = self.worker.in_hand > 0
            await self.lifecycle.move(AgentState.ACTIVE if busy else AgentState.IDLE)
            await self.server.set_serving(not self.worker.stalled(loop.time(), stalled_after))
            if int(loop.time()) % 30 == 0:
                await self.store.advertise(self.handlers.types, self.agent_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    async def stop(self) -> None:
        """Drain: NOT_SERVING, stop taking work, finish or hand back what is in hand."""
        await self.server.set_serving(False)
        self._stop.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.worker.drain(self.settings.shutdown_grace_s)
        await self.store.withdraw(self.agent_id)
        await self.server.stop()
        await self.lifecycle.move(AgentState.TERMINATED)
        await self._redis.aclose()
        await self._engine.dispose()
        log.info("task agent stopped")
