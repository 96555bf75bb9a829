"""Running a service process: start, wait for SIGTERM/SIGINT, drain, stop."""

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from libs.common.grpc_server import stop_on_signals

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
