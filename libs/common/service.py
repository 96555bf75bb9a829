"""Running a service process: start, wait for SIGTERM/SIGINT, drain, stop."""

import asyncio
import contextlib
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


Loop = Callable[[], Coroutine[Any, Any, None]]


class GrpcApp:
    """A service process built around one gRPC server: migrates its schema, serves, moves
    through the agent lifecycle, and runs background loops until stopped. A loop that
    crashes is logged and started again: a silent dead loop is the worst kind of outage.
    Subclasses give their loops, their drain and their clean-up."""

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

    def loops(self) -> dict[str, Loop]:
        """Background loops by name; each runs until `self._stop` is set."""
        return {}

    async def prepare(self) -> None:
        """Runs after the migrations, before the server serves."""

    async def drain(self) -> None:
        """Runs once the loops stopped, before the server stops: finish or hand back work."""

    async def close(self) -> None:
        """Releases what the subclass holds, after the server stopped."""

    async def start(self) -> None:
        if self._migrations is not None and self.settings.migrate_on_start:
            await asyncio.to_thread(upgrade, self.settings.database_url, self._migrations)
        await self.prepare()
        await self.server.start()
        await self.lifecycle.move(AgentState.INITIALIZED)
        await self.lifecycle.move(AgentState.IDLE)
        self._loops = [
            asyncio.create_task(self._supervise(name, loop), name=name)
            for name, loop in self.loops().items()
        ]
        log.info("started", role=self.role, port=self.server.port)

    async def _supervise(self, name: str, loop: Loop) -> None:
        while not self._stop.is_set():
            try:
                await loop()
                return
            except Exception:
                log.exception("background loop crashed; restarting it", loop=name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    async def stop(self) -> None:
        """SIGTERM: NOT_SERVING, stop taking work, drain, stop serving, release."""
        await self.server.set_serving(False)
        self._stop.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.drain()
        await self.server.stop()
        await self.close()
        await self.lifecycle.move(AgentState.TERMINATED)
        log.info("stopped", role=self.role)
