"""The gRPC server every service runs: grpc.aio, mTLS, the standard health service,
reflection, tracing, metrics, the call guard, and a drain on SIGTERM."""

import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.common import tracing
from libs.common.metrics import ServerMetrics
from libs.common.settings import GrpcServerSettings

log = structlog.get_logger(__name__)

# (add_XServicer_to_server, servicer, full service name)
ServiceBinding = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


class GrpcServer:
    """Owns the server and its health status. Health is NOT_SERVING until `set_serving(True)`
    (the agent is INITIALIZED) and again while draining."""

    def __init__(
        self,
        settings: GrpcServerSettings,
        services: Sequence[ServiceBinding],
        guard: grpc.aio.ServerInterceptor,
        credentials: grpc.ServerCredentials | None,
    ) -> None:
        """`credentials` None serves plaintext (security turned off)."""
        self._settings = settings
        self._credentials = credentials
        self._service_names = [name for _, _, name in services]
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        # Outermost first: the call's span is current while it is counted and guarded (its
        # audit row names the trace), and refusals are counted with their codes.
        self._server = grpc.aio.server(
            interceptors=[tracing.server_interceptor(), ServerMetrics(), guard], options=options
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for add, servicer, _ in services:
            add(servicer, self._server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            [*self._service_names, health_name, reflection.SERVICE_NAME], self._server
        )
        self.port = 0
        # Kubernetes' grpc probes speak plaintext, and the main port takes no call without a
        # client certificate: the same health status answers them on a port of its own.
        self._probe_server: grpc.aio.Server | None = None
        if settings.health_port is not None:
            self._probe_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._probe_server)
        self.health_port = 0

    async def start(self) -> int:
        address = f"{self._settings.grpc_host}:{self._settings.grpc_port}"
        if self._credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._credentials)
        await self.set_serving(False)
        await self._server.start()
        log.info("grpc server started", address=f"{self._settings.grpc_host}:{self.port}")
        if self._probe_server is not None:
            self.health_port = self._probe_server.add_insecure_port(
                f"{self._settings.grpc_host}:{self._settings.health_port}"
            )
            await self._probe_server.start()
            log.info("health probe port open", port=self.health_port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self._health.set(name, status)

    async def stop(self) -> None:
        """Refuses new calls and gives in-flight ones the grace period."""
        await self.set_serving(False)
        await self._server.stop(self._settings.shutdown_grace_s)
        if self._probe_server is not None:
            await self._probe_server.stop(None)
        log.info("grpc server stopped")


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
