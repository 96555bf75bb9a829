"""AgentRegistryService over gRPC: protobuf in, registry call, protobuf out."""

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from libs.common.errors import InvalidArgument, NotFound
from services.orchestrator.agent_store import AgentStore
from services.orchestrator.registry import HEARTBEAT_INTERVAL_S, AgentRecord, as_seen, check


def _state_name(value: int) -> str:
    try:
        return agents_pb2.AgentState.Name(agents_pb2.AgentState.ValueType(value)).removeprefix(
            "AGENT_STATE_"
        )
    except ValueError:
        raise InvalidArgument(f"unknown agent state {value}") from None


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _to_proto(record: AgentRecord) -> agents_pb2.Agent:
    return agents_pb2.Agent(
        id=record.id,
        role=record.role,
        instance=record.instance,
        version=record.version,
        state=agents_pb2.AgentState.Value(f"AGENT_STATE_{record.state}"),
        task_types=list(record.task_types),
        address=record.address,
        load=record.load,
        started_at=_timestamp(record.started_at),
        last_seen_at=_timestamp(record.last_seen_at),
    )


class AgentRegistryServicer(agents_pb2_grpc.AgentRegistryServiceServicer):
    def __init__(self, store: AgentStore) -> None:
        self._store = store

    async def RegisterAgent(
        self, request: agents_pb2.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> agents_pb2.RegisterAgentResponse:
        a = request.agent
        now = datetime.now(UTC)
        record = check(
            AgentRecord(
                id=a.id,
                role=a.role,
                instance=a.instance,
                version=a.version,
                state=_state_name(a.state),
                task_types=tuple(a.task_types),
                address=a.address,
                load=a.load,
                started_at=now,
                last_seen_at=now,
            )
        )
        stored = await self._store.register(record)
        return agents_pb2.RegisterAgentResponse(
            agent=_to_proto(stored), heartbeat_interval_s=HEARTBEAT_INTERVAL_S
        )

    async def Heartbeat(
        self, request: agents_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> agents_pb2.HeartbeatResponse:
        state = _state_name(request.state)
        if not 0 <= request.load <= 1:
            raise InvalidArgument("load must be between 0 and 1")
        stored = await self._store.heartbeat(request.agent_id, state, request.load)
        if stored is None:
            raise NotFound(f"agent {request.agent_id} is not registered")
        return agents_pb2.HeartbeatResponse(agent=_to_proto(stored))

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agents_pb2.ListAgentsResponse:
        now = datetime.now(UTC)
        seen = [as_seen(r, now) for r in await self._store.find(request.role or None)]
        if request.state:
            wanted = _state_name(request.state)
            seen = [r for r in seen if r.state == wanted]
        return agents_pb2.ListAgentsResponse(agents=[_to_proto(r) for r in seen])
