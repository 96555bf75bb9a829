"""Running a service process: start, wait for SIGTERM/SIGINT, drain, stop."""

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from libs.common.grpc_server import GrpcServer, ServiceBinding, stop_on_signals
from libs.common.lifecycle import SERVING_STATES, AgentState, Lifecycle
from libs.common.migrations import upgrade
from libs.common.settings import GrpcServerSettings

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


def run(make_app: Callable[[], App]) -> None:
    asyncio.run(run_until_signalled(make_app))


class GrpcApp:
    """A service process built around one gRPC server: migrates its schema, serves, moves
    through the agent lifecycle, and runs background loops until stopped. Subclasses give
    their loops and their clean-up."""

    role = "agent"

    def __init__(
        self,
        settings: GrpcServerSettings,
        services: Sequence[ServiceBinding],
        migrations: Path | None,
    ) -> None:
        self.settings = settings
        self.agent_id = f"{self.role}/{settings.instance}"
        self.lifecycle = Lifecycle()
        self.server = GrpcServer(settings, services)
        self._migrations = migrations
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.lifecycle.on_change(self._report_health)

    async def _report_health(self, state: AgentState) -> None:
        await self.server.set_serving(state in SERVING_STATES)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return []

    async def start(self) -> None:
        if self._migrations is not None and self.settings.migrate_on_start:
            await asyncio.to_thread(upgrade, self.settings.database_url, self._migrations)
        await self.server.start()
        await self.lifecycle.move(AgentState.INITIALIZED)
        self._loops = [asyncio.create_task(loop) for loop in self.loops()]
        await self.lifecycle.move(AgentState.ACTIVE)
        log.info("started", role=self.role, port=self.server.port)

    async def close(self) -> None:
        """Releases what the subclass holds, after the loops and the server stopped."""

    async def stop(self) -> None:
        await self.server.set_serving(False)
        self._stop.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.server.stop()
        await self.close()
        await self.lifecycle.move(AgentState.TERMINATED)
        log.info("stopped", role=self.role)
