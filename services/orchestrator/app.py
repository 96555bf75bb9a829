"""The orchestrator process: WorkflowService (runs advanced from the durable event stream,
a reconciler, schedules and event triggers), the outbound webhook subscriptions (events
from the same stream delivered as webhooks) and the agent registry."""

import asyncio
import json
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from agentry.events.v1 import events_pb2
from agentry.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from libs.common import tracing
from libs.common.crypto import Undecryptable, keyring_from_settings
from libs.common.db import create_engine
from libs.common.events import (
    Delivery,
    EventBus,
    EventConsumer,
    event_data,
    event_time,
    events_of,
    sealed_result_aad,
)
from libs.common.lifecycle import AgentState
from libs.common.metrics import follow_consumer
from libs.common.redis_client import Keys, create_redis
from libs.common.security import load_security
from libs.common.service import GrpcApp, Loop
from libs.common.waiting import pause
from services.orchestrator import metrics
from services.orchestrator.agent_checks import AgentChecks
from services.orchestrator.agent_store import AgentStore
from services.orchestrator.cron import cron_matches
from services.orchestrator.definition import WorkflowDef, load_definition
from services.orchestrator.deliveries import DeliveryRetry, WebhookDeliveries
from services.orchestrator.run_store import RunStore
from services.orchestrator.runs import Runs
from services.orchestrator.servicer import AgentRegistryServicer
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.subscription_servicer import WebhookSubscriptionServicer
from services.orchestrator.subscription_store import SubscriptionStore
from services.orchestrator.subscriptions import Subscriptions
from services.orchestrator.task_client import TaskClient, TaskEnd
from services.orchestrator.workflow_servicer import WorkflowServicer
from services.orchestrator.workflow_store import WorkflowStore

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "orchestrator"
# Batches of events read from the stream and being handled at once.
BATCHES_IN_HAND = 2
# A task.succeeded event that carries no result the orchestrator can open.
_NOT_CARRIED = object()
_ENDS = {"task.succeeded": "SUCCEEDED", "task.failed": "FAILED", "task.cancelled": "CANCELLED"}


def _consuming(events: list[events_pb2.Event]) -> AbstractContextManager[object]:
    """The span of handling a batch of events: it continues the trace of the first task
    end in it (so a lone run's next steps join its trace) and links to the others' traces
    (a batch serves many runs, and a span has one parent)."""
    ends = [e for e in events if e.type in _ENDS] or events
    contexts = [dict(e.trace_context) for e in ends]
    return tracing.continued(
        "consume events", contexts[0], contexts[1:], attributes={"agentry.events": len(events)}
    )


def _finish_times(events: list[events_pb2.Event]) -> list[float]:
    """When the tasks of runs among `events` ended (Unix time, the task agent's clock)."""
    times = []
    for event in events:
        if event.type in _ENDS:
            data = event_data(event) or {}
            if (data.get("labels") or {}).get("run") and data.get("finished_at"):
                times.append(float(data["finished_at"]))
    return times


class OrchestratorApp(GrpcApp):
    role = "orchestrator"

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._engine = create_engine(
            settings.database_url,
            pool_size=8,
            prepared_statements=settings.database_prepared_statements,
        )
        self._redis = create_redis(settings.redis_url)
        keys = Keys(settings.redis_prefix)
        self.events = EventBus(self._redis, keys, source=f"orchestrator/{settings.instance}")
        self._orchestrator_settings = settings
        security = load_security(settings)
        self.tasks = TaskClient(
            settings.task_service_address, security.identity, settings.rpc_timeout_s
        )
        keyring = self._keyring = keyring_from_settings(settings)
        store = RunStore(self._engine, keyring)
        agent_store = self._agent_store = AgentStore(self._engine)
        self.agent_checks = AgentChecks(agent_store, security.identity, timeout_s=3.0)
        self.runs = Runs(
            store,
            WorkflowStore(self._engine),
            self.tasks,
            self.events,
            continuations=settings.step_continuations,
        )
        subscription_store = SubscriptionStore(self._engine, keyring)
        self.webhooks = WebhookDeliveries(
            subscription_store,
            self.tasks,
            keyring,
            DeliveryRetry(
                settings.webhook_max_attempts,
                settings.webhook_initial_backoff_s,
                settings.webhook_max_backoff_s,
            ),
            settings.webhook_subscriptions_refresh_s,
        )
        subscriptions = Subscriptions(
            subscription_store, settings.webhook_max_subscriptions, self.webhooks.changed
        )
        super().__init__(
            settings,
            [
                (
                    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server,
                    WorkflowServicer(self.runs, self.events),
                    workflows_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
                ),
                (
                    workflows_pb2_grpc.add_WebhookSubscriptionServiceServicer_to_server,
                    WebhookSubscriptionServicer(subscriptions),
                    workflows_pb2.DESCRIPTOR.services_by_name[
                        "WebhookSubscriptionService"
                    ].full_name,
                ),
                (
                    agents_pb2_grpc.add_AgentRegistryServiceServicer_to_server,
                    AgentRegistryServicer(agent_store),
                    agents_pb2.DESCRIPTOR.services_by_name["AgentRegistryService"].full_name,
                ),
            ],
            MIGRATIONS,
            security,
        )
        self._consumer = EventConsumer(
            self._redis,
            keys,
            group=CONSUMER_GROUP,
            consumer=settings.instance,
            batch=settings.event_batch,
        )
        self._triggered: dict[str, list[str]] = {}
        self._scheduled: dict[str, str] = {}

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {
            "follow-tasks": self._follow_tasks,
            "reconcile": self._reconcile,
            "definitions": self._refresh_definitions,
            "schedules": self._fire_schedules,
            "check-agents": self._check_agents,
        }
        if self.metrics_on:
            loops["consumer-standing"] = lambda: follow_consumer(self._consumer, self._stop)
        return loops

    async def _check_agents(self) -> None:
        while not self._stop.is_set():
            await self.agent_checks.check()
            if self.metrics_on:
                agents = await self._agent_store.find(None)
                metrics.show_agents((agent.role, agent.state) for agent in agents)
            await pause(self._stop, self._orchestrator_settings.agent_check_interval_s)

    async def _follow_tasks(self) -> None:
        """Task ends (and events that trigger workflows or are delivered as webhooks) from
        the durable stream, in the group every orchestrator shares: each once, none lost
        across a crash."""
        await self._consumer.ensure_group()
        # Two batches in hand: while one waits on Postgres and TaskService, the next is
        # read and handled (the runs' row locks keep each run's changes in order).
        in_hand = asyncio.Semaphore(BATCHES_IN_HAND)
        handling: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def handled(task: asyncio.Task[None]) -> None:
            handling.discard(task)
            in_hand.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        try:
            while not self._stop.is_set():
                await in_hand.acquire()
                if failures:
                    raise failures[0]  # the loop's supervisor logs it and starts it again
                deliveries = await self._consumer.read()
                await self.lifecycle.move(AgentState.ACTIVE if deliveries else AgentState.IDLE)
                task = asyncio.create_task(self._handle(deliveries))
                handling.add(task)
                task.add_done_callback(handled)
        finally:
            await asyncio.gather(*handling, return_exceptions=True)
            await self._consumer.flush()

    async def _handle(self, deliveries: list[Delivery]) -> None:
        """One batch read from the stream; acknowledged once handled, with the next read (a
        batch that fails stays pending and is claimed again)."""
        events = events_of(deliveries)
        if events:
            with _consuming(events):
                await self.runs.tasks_ended(await self._ends(events))
                metrics.observe_step_overhead(_finish_times(events))
                await self._trigger(events)
                await self.webhooks.deliver(events)
        self._consumer.ack(deliveries)

    async def _ends(self, events: list[events_pb2.Event]) -> list[tuple[uuid.UUID, TaskEnd]]:
        ends: list[tuple[uuid.UUID, TaskEnd]] = []
        succeeded: dict[uuid.UUID, uuid.UUID] = {}
        for event in events:
            state = _ENDS.get(event.type)
            if state is None:
                continue
            data = json.loads(event.data)
            run = (data.get("labels") or {}).get("run")
            if not run:
                continue
            task_id = uuid.UUID(data["id"])
            if state == "SUCCEEDED":
                output = self._carried_result(event, task_id)
                if output is _NOT_CARRIED:
                    succeeded[task_id] = uuid.UUID(run)  # its result is read from TaskService
                else:
                    continued = frozenset(uuid.UUID(i) for i in data.get("continued", ()))
                    ends.append((uuid.UUID(run), TaskEnd(task_id, state, output, "", continued)))
            else:
                error = data.get("error") or data.get("reason") or state.lower()
                ends.append((uuid.UUID(run), TaskEnd(task_id, state, error=error)))
        for end in await self.tasks.ends(list(succeeded)):
            ends.append((succeeded[end.task_id], end))
        return ends

    def _carried_result(self, event: events_pb2.Event, task_id: uuid.UUID) -> Any:
        """The result a task.succeeded event carries sealed, or _NOT_CARRIED (too large to
        carry, or sealed with a key this orchestrator does not hold)."""
        if not event.sealed_result:
            return _NOT_CARRIED
        try:
            return json.loads(
                self._keyring.decrypt(event.sealed_result, sealed_result_aad(task_id))
            )
        except Undecryptable:
            return _NOT_CARRIED

    async def _trigger(self, events: list[events_pb2.Event]) -> None:
        for event in events:
            # A run's own events never start runs: no workflow can trigger itself forever.
            if event.type.startswith(("run.", "step.")):
                continue
            for name in self._triggered.get(event.type, ()):
                run_input = {
                    "event": {
                        "id": event.id,
                        "type": event.type,
                        "subject": event.subject,
                        "time": event_time(event),
                        "data": json.loads(event.data) if event.data else None,
                    }
                }
                await self.runs.start(
                    name, 0, json.dumps(run_input).encode(), f"trigger:{name}:{event.id}"
                )

    async def _reconcile(self) -> None:
        settings = self._orchestrator_settings
        while not self._stop.is_set():
            await self.runs.reconcile(settings.stale_run_s)
            await pause(self._stop, settings.reconcile_interval_s)

    async def _refresh_definitions(self) -> None:
        while not self._stop.is_set():
            await self.refresh_definitions()
            await pause(self._stop, self._orchestrator_settings.definitions_refresh_s)

    async def refresh_definitions(self) -> None:
        """Which workflows events trigger and which run on a schedule (latest versions)."""
        triggered: dict[str, list[str]] = {}
        scheduled: dict[str, str] = {}
        after = ""
        while page := await self.runs.workflows(after, 500):
            for record in page:
                defn: WorkflowDef = load_definition(record.name, record.definition)
                for event_type in defn.triggers:
                    triggered.setdefault(event_type, []).append(record.name)
                if defn.schedule:
                    scheduled[record.name] = defn.schedule
            after = page[-1].name
        self._triggered, self._scheduled = triggered, scheduled

    async def _fire_schedules(self) -> None:
        while not self._stop.is_set():
            minute = datetime.now(UTC).replace(second=0, microsecond=0)
            await self.fire_schedules(minute)
            next_minute = minute + timedelta(minutes=1)
            await pause(self._stop, (next_minute - datetime.now(UTC)).total_seconds() + 0.05)

    async def fire_schedules(self, minute: datetime) -> None:
        """A run of every workflow whose schedule matches `minute`. Every orchestrator
        tries; the run's idempotency key (workflow and minute) lets exactly one win."""
        for name, schedule in list(self._scheduled.items()):
            if cron_matches(schedule, minute):
                run_input = {"scheduled_at": minute.isoformat()}
                key = f"schedule:{name}:{minute.isoformat()}"
                await self.runs.start(name, 0, json.dumps(run_input).encode(), key)

    async def close(self) -> None:
        await self.runs.settle()
        await self.tasks.close()
        await self._redis.aclose()
        await self._engine.dispose()
