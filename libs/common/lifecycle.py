"""The seed's agent lifecycle: CREATED -> INITIALIZED -> ACTIVE <-> IDLE -> TERMINATED."""

import enum
from collections.abc import Awaitable, Callable

import structlog

from libs.common.errors import FailedPrecondition

log = structlog.get_logger(__name__)


class AgentState(enum.Enum):
    CREATED = "CREATED"
    INITIALIZED = "INITIALIZED"
    ACTIVE = "ACTIVE"
    IDLE = "IDLE"
    TERMINATED = "TERMINATED"


_NEXT: dict[AgentState, frozenset[AgentState]] = {
    AgentState.CREATED: frozenset({AgentState.INITIALIZED, AgentState.TERMINATED}),
    AgentState.INITIALIZED: frozenset({AgentState.ACTIVE, AgentState.IDLE, AgentState.TERMINATED}),
    AgentState.ACTIVE: frozenset({AgentState.IDLE, AgentState.TERMINATED}),
    AgentState.IDLE: frozenset({AgentState.ACTIVE, AgentState.TERMINATED}),
    AgentState.TERMINATED: frozenset(),
}

# States in which the agent answers SERVING to health checks.
SERVING_STATES = frozenset({AgentState.INITIALIZED, AgentState.ACTIVE, AgentState.IDLE})

Listener = Callable[[AgentState], Awaitable[None]]


class Lifecycle:
    def __init__(self) -> None:
        self.state = AgentState.CREATED
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def move(self, to: AgentState) -> None:
        if to == self.state:
            return
        if to not in _NEXT[self.state]:
            raise FailedPrecondition(f"agent cannot go from {self.state.value} to {to.value}")
        log.info("agent state", previous=self.state.value, state=to.value)
        self.state = to
        for listener in self._listeners:
            await listener(to)
