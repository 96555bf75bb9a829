"""Every agent tells the orchestrator's registry who it is (role, instance, version, task
types, address) and keeps telling it its lifecycle state and load. The registry being away
never stops an agent's work: registration is retried in the background."""

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from libs.common.channels import ServiceChannel
from libs.common.identity import AgentIdentity
from libs.common.lifecycle import AgentState
from libs.common.waiting import pause

log = structlog.get_logger(__name__)


class RegistryReporter:
    def __init__(
        self,
        registry_address: str,
        agent: agents_pb2.Agent,
        state: Callable[[], AgentState],
        load: Callable[[], float],
        identity: AgentIdentity | None,
    ) -> None:
        self._address = registry_address
        self._identity = identity
        self._agent = agent
        self._state = state
        self._load = load
        self._interval_s = 5.0
        self._registered = False
        self._channel: ServiceChannel | None = None

    def _stub(self) -> agents_pb2_grpc.AgentRegistryServiceStub:
        if self._channel is None:
            self._channel = ServiceChannel(self._address, "orchestrator", self._identity)
        return self._channel.stub(agents_pb2_grpc.AgentRegistryServiceStub)

    def _proto_state(self) -> agents_pb2.AgentState.ValueType:
        return agents_pb2.AgentState.Value(f"AGENT_STATE_{self._state().value}")

    async def run(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            try:
                await self.report()
                if failing:
                    log.info("registry reachable again", registry=self._address)
                failing = False
            except grpc.aio.AioRpcError as exc:
                if not failing:
                    log.warning(
                        "registry unreachable; retrying",
                        registry=self._address,
                        code=exc.code().name,
                    )
                failing = True
            await pause(stop, self._interval_s)

    async def report(self, timeout_s: float = 3.0) -> None:
        stub = self._stub()
        if self._registered:
            try:
                await stub.Heartbeat(
                    agents_pb2.HeartbeatRequest(
                        agent_id=self._agent.id, state=self._proto_state(), load=self._load()
                    ),
                    timeout=timeout_s,
                )
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self._registered = False  # the registry lost us: register again
        agent = agents_pb2.Agent()
        agent.CopyFrom(self._agent)
        agent.state = self._proto_state()
        agent.load = self._load()
        reply = await stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(agent=agent), timeout=timeout_s
        )
        self._interval_s = reply.heartbeat_interval_s or self._interval_s
        self._registered = True

    async def close(self) -> None:
        """A last report (TERMINATED, as the agent now is), then the channel closes."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.report(timeout_s=1.0)
        if self._channel is not None:
            await self._channel.close()
