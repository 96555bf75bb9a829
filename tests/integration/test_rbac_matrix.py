"""The whole RBAC matrix, walked through real servers: every RPC of every service, called
by every role, is refused (PERMISSION_DENIED) exactly when the role may not call it. The
expectation is written here from the roles' meaning, independently of the policy file."""

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from agentry.agents.v1 import agents_pb2
from agentry.analysis.v1 import analysis_pb2
from agentry.tasks.v1 import tasks_pb2
from agentry.workflows.v1 import workflows_pb2
from libs.common.rbac import Policy
from services.analysis.app import AnalysisApp
from services.analysis.settings import AnalysisSettings
from services.orchestrator.app import OrchestratorApp
from services.orchestrator.settings import OrchestratorSettings
from tests.secure import channel_to, dev_secrets, security_settings

REGISTERS = {"RegisterAgent", "Heartbeat"}
READS = {
    "GetTask",
    "GetTasks",
    "ListTasks",
    "WatchTask",
    "ListDeadLetters",
    "ListTaskTypes",
    "GetQueueStats",
    "GetWorkflow",
    "ListWorkflows",
    "GetRun",
    "ListRuns",
    "WatchRun",
    "ListAgents",
    "GetReport",
    "ListInsights",
    "GetCanaryAnalysis",
    "ListCanaryAnalyses",
}
OPERATES = {
    "SubmitTask",
    "SubmitTasks",
    "CancelTask",
    "RedriveDeadLetter",
    "StartRun",
    "CancelRun",
    "RetryRun",
    "AnalyzeCanary",
}
ADMINISTERS = {
    "PurgeDeadLetters",
    "RegisterWorkflow",
    "RunAnalysis",
    # Webhook subscriptions: admins only, reading included.
    "CreateSubscription",
    "ListSubscriptions",
    "DeleteSubscription",
}
EXPECTED = {
    "viewer": READS,
    "operator": READS | OPERATES,
    "admin": READS | OPERATES | ADMINISTERS,
    # On its own (inbound webhooks start runs); for people it relays their role decides.
    "gateway": REGISTERS | {"StartRun"},
    "task_agent": REGISTERS | {"RunAnalysis"},
    "orchestrator": REGISTERS
    | {
        "ListAgents",
        "SubmitTask",
        "SubmitTasks",
        "GetTask",
        "GetTasks",
        "CancelTask",
        "WatchTask",
        "ListTaskTypes",
        "GetReport",
    },
    "analysis": REGISTERS | {"ListAgents", "SubmitTask", "GetQueueStats"},
}
# Which server serves each service, by the identity in its certificate.
SERVED_BY = {
    tasks_pb2.DESCRIPTOR.services_by_name["TaskService"]: "task-agent",
    agents_pb2.DESCRIPTOR.services_by_name["AgentRegistryService"]: "orchestrator",
    workflows_pb2.DESCRIPTOR.services_by_name["WorkflowService"]: "orchestrator",
    workflows_pb2.DESCRIPTOR.services_by_name["WebhookSubscriptionService"]: "orchestrator",
    analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"]: "analysis",
}
METHODS = [method for service in SERVED_BY for method in service.methods]
# Agent role -> the identity whose certificate carries it.
AGENT_ROLES = {
    "gateway": "gateway",
    "task_agent": "task-agent",
    "orchestrator": "orchestrator",
    "analysis": "analysis",
}


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def test_every_rpc_is_classified() -> None:
    """A new RPC must be placed in the matrix (and the policy) before it ships."""
    names = {method.name for method in METHODS}
    assert names == REGISTERS | READS | OPERATES | ADMINISTERS


def test_the_policy_file_matches_the_matrix() -> None:
    policy = Policy.load()
    for role, allowed in EXPECTED.items():
        granted = {m.name for m in METHODS if policy.allows_rpc(role, _path(m))}
        assert granted == allowed, role


@pytest.fixture
async def ports(task_agent, clean_db: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    common = {
        "database_url": clean_db,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "grpc_port": 0,
        "migrate_on_start": False,
        "log_format": "console",
        **security_settings(),
    }
    orchestrator = OrchestratorApp(
        OrchestratorSettings(**common, tls_dir=dev_secrets().tls_dir("orchestrator"))
    )
    analysis = AnalysisApp(AnalysisSettings(**common, tls_dir=dev_secrets().tls_dir("analysis")))
    await orchestrator.start()
    await analysis.start()
    yield {
        "task-agent": task_agent.server.port,
        "orchestrator": orchestrator.server.port,
        "analysis": analysis.server.port,
    }
    await analysis.stop()
    await orchestrator.stop()


async def _code(channel: grpc.aio.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    """Calls `method` with an empty request; answers how it ended."""
    request = message_factory.GetMessageClass(method.input_type)()
    path = _path(method)
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString())
            async for _ in call(request, timeout=5):
                break
        else:
            unary = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString())
            await unary(request, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_role_reaches_exactly_what_it_may(ports) -> None:
    wrong = []
    for role, allowed in EXPECTED.items():
        for method in METHODS:
            callee = SERVED_BY[method.containing_service]
            if role in AGENT_ROLES:
                channel = channel_to(ports[callee], callee, role=None, identity=AGENT_ROLES[role])
            else:
                channel = channel_to(ports[callee], callee, role=role)
            async with channel:
                code = await _code(channel, method)
            if (code == grpc.StatusCode.PERMISSION_DENIED) != (method.name not in allowed):
                wrong.append(f"{role} {method.full_name}: {code.name}")
            assert code != grpc.StatusCode.UNAUTHENTICATED, f"{role} {method.full_name}"
    assert wrong == []
