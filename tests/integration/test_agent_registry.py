"""Every agent registers with the orchestrator's registry and reports its lifecycle; bad
registrations are refused."""

import asyncio

import grpc
import pytest

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from tests.secure import channel_to

A = agents_pb2


@pytest.fixture
async def orchestrator(make_orchestrator):
    # Health checks only when a test asks for them.
    return await make_orchestrator(agent_check_interval_s=3600)


async def _agents(stub, role: str = "") -> dict[str, agents_pb2.Agent]:
    reply = await stub.ListAgents(A.ListAgentsRequest(role=role))
    return {a.id: a for a in reply.agents}


async def _until(stub, check, within: float = 10.0) -> dict[str, agents_pb2.Agent]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check(found := await _agents(stub)):
        assert loop.time() < deadline, found
        await asyncio.sleep(0.05)
    return found


async def test_a_task_agent_registers_and_reports_until_it_terminates(
    orchestrator, make_task_agent
) -> None:
    address = f"127.0.0.1:{orchestrator.server.port}"
    agent = await make_task_agent(registry_address=address, version="1.2.3")
    async with channel_to(orchestrator.server.port, "orchestrator", role="viewer") as channel:
        stub = agents_pb2_grpc.AgentRegistryServiceStub(channel)
        found = await _until(stub, lambda f: agent.agent_id in f)
        record = found[agent.agent_id]
        assert record.role == "task_agent"
        assert record.version == "1.2.3"
        assert {"echo", "sleep", "fail"} <= set(record.task_types)
        assert record.state in (A.AGENT_STATE_IDLE, A.AGENT_STATE_ACTIVE)
        assert record.address == f"127.0.0.1:{agent.server.port}"

        await agent.stop()

        found = await _until(stub, lambda f: f[agent.agent_id].state == A.AGENT_STATE_TERMINATED)
        assert found[agent.agent_id].state == A.AGENT_STATE_TERMINATED


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        (A.Agent(id="x/1", role="task_agent", instance="1"), "agent id must be"),
        (A.Agent(id="/1", role="", instance="1"), "needs a role"),
        (
            A.Agent(id="a/1", role="a", instance="1", state=A.AGENT_STATE_UNRESPONSIVE),
            "unknown agent state",
        ),
        (A.Agent(id="a/1", role="a", instance="1", state=A.AGENT_STATE_IDLE, load=2), "load"),
    ],
)
async def test_bad_registrations_are_refused_and_store_nothing(
    orchestrator, agent, message
) -> None:
    async with channel_to(
        orchestrator.server.port, "orchestrator", role=None, identity="orchestrator"
    ) as channel:
        stub = agents_pb2_grpc.AgentRegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterAgent(A.RegisterAgentRequest(agent=agent))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
        assert await _agents(stub) == {}


async def test_a_heartbeat_from_an_unknown_agent_is_not_found(orchestrator) -> None:
    async with channel_to(
        orchestrator.server.port, "orchestrator", role=None, identity="orchestrator"
    ) as channel:
        stub = agents_pb2_grpc.AgentRegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Heartbeat(
                A.HeartbeatRequest(agent_id="task_agent/ghost", state=A.AGENT_STATE_IDLE)
            )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_agent_that_fails_its_health_check_is_marked_unresponsive(
    orchestrator, make_task_agent
) -> None:
    address = f"127.0.0.1:{orchestrator.server.port}"
    healthy = await make_task_agent(registry_address=address)
    failing = await make_task_agent(registry_address=address)
    async with channel_to(orchestrator.server.port, "orchestrator", role="viewer") as channel:
        stub = agents_pb2_grpc.AgentRegistryServiceStub(channel)
        await _until(stub, lambda f: healthy.agent_id in f and failing.agent_id in f)
        # Its process lives (heartbeats would go on) but it no longer serves.
        await failing.server.set_serving(False)

        assert await orchestrator.agent_checks.check() == [failing.agent_id]

        found = await _agents(stub)
        assert found[failing.agent_id].state == A.AGENT_STATE_UNRESPONSIVE
        assert found[healthy.agent_id].state in (A.AGENT_STATE_IDLE, A.AGENT_STATE_ACTIVE)
