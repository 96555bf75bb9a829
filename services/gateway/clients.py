"""gRPC clients of the services behind the gateway, over mTLS as the `gateway` identity. A
failed call surfaces as the same domain error the service raised."""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentry.agents.v1 import agents_pb2_grpc
from agentry.analysis.v1 import analysis_pb2_grpc
from agentry.tasks.v1 import tasks_pb2_grpc
from agentry.workflows.v1 import workflows_pb2_grpc
from libs.common.channels import ServiceChannel
from libs.common.grpc_errors import from_rpc_error
from libs.common.identity import AgentIdentity

R = TypeVar("R")


class Services:
    """Channels and stubs, made inside the running event loop (at app start-up)."""

    def __init__(
        self,
        task_address: str,
        orchestrator_address: str,
        analysis_address: str,
        timeout_s: float,
        identity: AgentIdentity | None,
    ) -> None:
        self._timeout_s = timeout_s
        self._task_channel = ServiceChannel(task_address, "task-agent", identity)
        self._orchestrator_channel = ServiceChannel(orchestrator_address, "orchestrator", identity)
        self._analysis_channel = ServiceChannel(analysis_address, "analysis", identity)

    @property
    def tasks(self) -> tasks_pb2_grpc.TaskServiceStub:
        return self._task_channel.stub(tasks_pb2_grpc.TaskServiceStub)

    @property
    def workflows(self) -> workflows_pb2_grpc.WorkflowServiceStub:
        return self._orchestrator_channel.stub(workflows_pb2_grpc.WorkflowServiceStub)

    @property
    def subscriptions(self) -> workflows_pb2_grpc.WebhookSubscriptionServiceStub:
        return self._orchestrator_channel.stub(workflows_pb2_grpc.WebhookSubscriptionServiceStub)

    @property
    def agents(self) -> agents_pb2_grpc.AgentRegistryServiceStub:
        return self._orchestrator_channel.stub(agents_pb2_grpc.AgentRegistryServiceStub)

    @property
    def analysis(self) -> analysis_pb2_grpc.AnalysisServiceStub:
        return self._analysis_channel.stub(analysis_pb2_grpc.AnalysisServiceStub)

    async def call(self, method: Callable[..., Awaitable[R]], request: Any) -> R:
        try:
            return await method(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def ready(self) -> dict[str, bool]:
        try:
            health = self._task_channel.stub(health_pb2_grpc.HealthStub)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        return {"task_service": serving}

    async def close(self) -> None:
        await self._task_channel.close()
        await self._orchestrator_channel.close()
        await self._analysis_channel.close()
