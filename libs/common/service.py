"""Running a service process: start, wait for SIGTERM/SIGINT, drain, stop."""

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from agentry.agents.v1 import agents_pb2
from libs.common import metrics
from libs.common.audit import AuditLog, upgrade_audit
from libs.common.call_guard import CallGuard
from libs.common.db import create_engine
from libs.common.grpc_server import GrpcServer, ServiceBinding, stop_on_signals
from libs.common.lifecycle import SERVING_STATES, AgentState, Lifecycle
from libs.common.migrations import upgrade
from libs.common.registration import RegistryReporter
from libs.common.security import Security, load_security
from libs.common.settings import GrpcServerSettings
from libs.common.tracing import shutdown_tracing
from libs.common.waiting import pause

log = structlog.get_logger(__name__)


class App(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(make_app: Callable[[], App]) -> None:
    stop = stop_on_signals()
    app = make_app()  # inside the loop: grpc.aio and asyncio objects bind to it
    await app.start()
    await stop.wait()
    log.info("stopping")
    await app.stop()
    shutdown_tracing()


def run(make_app: Callable[[], App]) -> None:
    asyncio.run(run_until_signalled(make_app))


Loop = Callable[[], Coroutine[Any, Any, None]]


class GrpcApp:
    """A service process built around one gRPC server: migrates its schema, serves behind
    the call guard (mTLS, tokens, RBAC, audit), moves through the agent lifecycle, and runs
    background loops until stopped. A loop that
    crashes is logged and started again: a silent dead loop is the worst kind of outage.
    Subclasses give their loops, their drain and their clean-up."""

    role = "agent"

    def __init__(
        self,
        settings: GrpcServerSettings,
        services: Sequence[ServiceBinding],
        migrations: Path | None,
        security: Security | None = None,
    ) -> None:
        """`security`: when the subclass needed it first (for its own clients)."""
        self.settings = settings
        self.agent_id = f"{self.role}/{settings.instance}"
        self.lifecycle = Lifecycle()
        self.security = security or load_security(settings)
        self._audit_engine = create_engine(
            settings.database_url,
            pool_size=2,
            prepared_statements=settings.database_prepared_statements,
        )
        self.audit = AuditLog(self._audit_engine)
        identity = self.security.identity
        self.server = GrpcServer(
            settings,
            services,
            CallGuard(self.security.authenticator(), self.security.policy, self.audit),
            identity.server_credentials() if identity else None,
        )
        self._migrations = migrations
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._reporter: RegistryReporter | None = None
        self.lifecycle.on_change(self._report_health)

    async def _report_health(self, state: AgentState) -> None:
        await self.server.set_serving(state in SERVING_STATES)

    def loops(self) -> dict[str, Loop]:
        """Background loops by name; each runs until `self._stop` is set."""
        return {}

    def task_types(self) -> list[str]:
        """What this agent advertises to the registry as the task types it serves."""
        return []

    def load(self) -> float:
        """Work in hand over capacity, 0..1, reported to the registry."""
        return 0.0

    async def prepare(self) -> None:
        """Runs after the migrations, before the server serves."""

    async def drain(self) -> None:
        """Runs once the loops stopped, before the server stops: finish or hand back work."""

    async def close(self) -> None:
        """Releases what the subclass holds, after the server stopped."""

    @property
    def metrics_on(self) -> bool:
        """Whether anyone can read metrics: gauges that cost a Redis read are kept only then."""
        return self.settings.metrics_port is not None

    async def start(self) -> None:
        metrics.describe_service(self.role, self.settings.version, self.security.identity)
        if self.settings.metrics_port is not None:
            metrics.serve_metrics(self.settings.metrics_port, self.settings.grpc_host)
        if self.settings.migrate_on_start:
            await asyncio.to_thread(upgrade_audit, self.settings.database_url)
            if self._migrations is not None:
                await asyncio.to_thread(upgrade, self.settings.database_url, self._migrations)
        await self.prepare()
        await self.server.start()
        await self.lifecycle.move(AgentState.INITIALIZED)
        await self.lifecycle.move(AgentState.IDLE)
        loops = self.loops()
        if self.settings.registry_address:
            reporter = self._reporter = RegistryReporter(
                self.settings.registry_address,
                agents_pb2.Agent(
                    id=self.agent_id,
                    role=self.role,
                    instance=self.settings.instance,
                    version=self.settings.version,
                    task_types=self.task_types(),
                    address=f"{self.settings.grpc_host}:{self.server.port}",
                ),
                state=lambda: self.lifecycle.state,
                load=self.load,
                identity=self.security.identity,
            )
            loops["registry"] = lambda: reporter.run(self._stop)
        self._loops = [
            asyncio.create_task(self._supervise(name, loop), name=name)
            for name, loop in loops.items()
        ]
        log.info("started", role=self.role, port=self.server.port)

    async def _supervise(self, name: str, loop: Loop) -> None:
        while not self._stop.is_set():
            try:
                await loop()
                return
            except Exception:
                log.exception("background loop crashed; restarting it", loop=name)
                await pause(self._stop, 1.0)

    async def stop(self) -> None:
        """SIGTERM: NOT_SERVING, stop taking work, drain, stop serving, release."""
        await self.server.set_serving(False)
        self._stop.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.drain()
        await self.server.stop()
        await self.close()
        await self.lifecycle.move(AgentState.TERMINATED)
        if self._reporter is not None:
            await self._reporter.close()
        await self._audit_engine.dispose()
        log.info("stopped", role=self.role)
