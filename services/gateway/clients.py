"""gRPC clients of the services behind the gateway. A failed call surfaces as the same
domain error the service raised."""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentry.agents.v1 import agents_pb2_grpc
from agentry.tasks.v1 import tasks_pb2_grpc
from libs.common.grpc_errors import from_rpc_error

R = TypeVar("R")


class Services:
    """Channels and stubs, made inside the running event loop (at app start-up)."""

    def __init__(self, task_address: str, orchestrator_address: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._task_channel = grpc.aio.insecure_channel(task_address)
        self.tasks = tasks_pb2_grpc.TaskServiceStub(self._task_channel)
        self._task_health = health_pb2_grpc.HealthStub(self._task_channel)
        self._orchestrator_channel = grpc.aio.insecure_channel(orchestrator_address)
        self.agents = agents_pb2_grpc.AgentRegistryServiceStub(self._orchestrator_channel)

    async def call(self, method: Callable[..., Awaitable[R]], request: Any) -> R:
        try:
            return await method(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def ready(self) -> dict[str, bool]:
        try:
            reply = await self._task_health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        return {"task_service": serving}

    async def close(self) -> None:
        await self._task_channel.close()
        await self._orchestrator_channel.close()
