import asyncio
import contextlib
import gc
from collections.abc import Iterator

import uvicorn

from libs.common.grpc_server import stop_on_signals
from libs.common.logging import configure_logging
from libs.common.metrics import serve_metrics
from libs.common.tracing import configure_tracing, shutdown_tracing
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM is ours, as in every service, and
    the process exits 0 after the drain instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: GatewaySettings) -> None:
    # A listener of its own, as every service's: the HTTP port is the public one.
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, settings.http_host)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    stop = stop_on_signals()
    serving = asyncio.create_task(server.serve())
    await asyncio.wait([serving, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    server.should_exit = True
    await serving
    shutdown_tracing()


def main() -> None:
    settings = GatewaySettings()
    configure_logging(
        "gateway", settings.instance, settings.log_format, settings.log_level, settings.version
    )
    configure_tracing("gateway", settings.instance, settings.version, settings.otlp_endpoint)
    # A gateway holding a thousand WebSockets has ~150k objects: a full collection then
    # pauses every client for 100-200 ms. What start-up made is never collected again, and
    # collections come less often (bench/events_ws.py: p99 150 ms -> 5 ms).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
