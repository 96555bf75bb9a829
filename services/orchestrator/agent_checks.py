"""Periodic validation of the registered agents through the standard gRPC health protocol:
heartbeats say an agent's process lives, the health check that it serves. One that does not
answer SERVING is marked UNRESPONSIVE until its next heartbeat says otherwise; the task
agents' leases then hand its tasks to the others (their reconcilers reclaim them)."""

import asyncio

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.common.channels import open_channel
from libs.common.identity import AgentIdentity
from services.orchestrator.agent_store import AgentStore
from services.orchestrator.registry import AgentRecord

log = structlog.get_logger(__name__)

# The roles that serve gRPC, and the identity their certificates carry.
CHECKED_ROLES = {"task_agent": "task-agent", "orchestrator": "orchestrator", "analysis": "analysis"}


class AgentChecks:
    def __init__(self, store: AgentStore, identity: AgentIdentity | None, timeout_s: float) -> None:
        self._store = store
        self._identity = identity
        self._timeout_s = timeout_s

    async def _serving(self, agent: AgentRecord) -> bool:
        channel = open_channel(agent.address, CHECKED_ROLES[agent.role], self._identity)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        finally:
            await channel.close()
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def check(self) -> list[str]:
        """Checks every live gRPC agent at once; answers the ids marked UNRESPONSIVE."""
        agents = [
            a
            for a in await self._store.find(None)
            if a.role in CHECKED_ROLES and a.state not in ("TERMINATED", "UNRESPONSIVE")
        ]
        serving = await asyncio.gather(*(self._serving(a) for a in agents))
        failed = [a.id for a, ok in zip(agents, serving, strict=True) if not ok]
        for agent_id in failed:
            await self._store.mark_unresponsive(agent_id)
            log.warning("agent failed its health check", agent=agent_id)
        return failed
