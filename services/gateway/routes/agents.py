"""/v1/agents: the registry of running agents."""

from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from agentry.agents.v1 import agents_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services

router = APIRouter(prefix="/v1", tags=["agents"])


class AgentOut(BaseModel):
    id: str
    role: str
    instance: str
    version: str
    state: str
    task_types: list[str]
    address: str
    load: float
    started_at: datetime
    last_seen_at: datetime

    @classmethod
    def from_proto(cls, a: agents_pb2.Agent) -> "AgentOut":
        return cls(
            id=a.id,
            role=a.role,
            instance=a.instance,
            version=a.version,
            state=agents_pb2.AgentState.Name(a.state).removeprefix("AGENT_STATE_"),
            task_types=list(a.task_types),
            address=a.address,
            load=a.load,
            started_at=a.started_at.ToDatetime(tzinfo=UTC),
            last_seen_at=a.last_seen_at.ToDatetime(tzinfo=UTC),
        )


class AgentList(BaseModel):
    items: list[AgentOut]


@router.get("/agents", response_model=AgentList)
async def list_agents(
    request: Request,
    principal: Authorized,
    role: str | None = Query(None, max_length=64),
) -> AgentList:
    services: Services = request.app.state.services
    reply = await services.call(
        services.agents.ListAgents, agents_pb2.ListAgentsRequest(role=role or "")
    )
    return AgentList(items=[AgentOut.from_proto(a) for a in reply.agents])
