"""The agent lifecycle: CREATED -> INITIALIZED -> ACTIVE <-> IDLE -> TERMINATED."""

import pytest

from libs.common.errors import FailedPrecondition
from libs.common.lifecycle import SERVING_STATES, AgentState, Lifecycle

S = AgentState


async def _at(*path: AgentState) -> tuple[Lifecycle, list[AgentState]]:
    """A lifecycle moved along `path`, and the states its listener heard."""
    lifecycle = Lifecycle()
    heard: list[AgentState] = []

    async def listen(state: AgentState) -> None:
        heard.append(state)

    lifecycle.on_change(listen)
    for state in path:
        await lifecycle.move(state)
    return lifecycle, heard


async def test_a_new_agent_is_created_and_not_serving() -> None:
    lifecycle = Lifecycle()

    assert lifecycle.state == S.CREATED
    assert S.CREATED not in SERVING_STATES


async def test_the_whole_life_of_an_agent_is_heard_in_order() -> None:
    path = [S.INITIALIZED, S.IDLE, S.ACTIVE, S.IDLE, S.ACTIVE, S.TERMINATED]

    lifecycle, heard = await _at(*path)

    assert lifecycle.state == S.TERMINATED
    assert heard == path


@pytest.mark.parametrize(
    "path",
    [
        [S.TERMINATED],
        [S.INITIALIZED, S.TERMINATED],
        [S.INITIALIZED, S.ACTIVE],
        [S.INITIALIZED, S.IDLE, S.TERMINATED],
        [S.INITIALIZED, S.ACTIVE, S.TERMINATED],
    ],
)
async def test_legal_moves(path: list[AgentState]) -> None:
    lifecycle, heard = await _at(*path)

    assert lifecycle.state == path[-1]
    assert heard == path


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], S.ACTIVE),
        ([], S.IDLE),
        ([S.INITIALIZED], S.CREATED),
        ([S.INITIALIZED, S.ACTIVE], S.INITIALIZED),
        ([S.INITIALIZED, S.IDLE], S.CREATED),
        ([S.TERMINATED], S.INITIALIZED),
        ([S.INITIALIZED, S.TERMINATED], S.IDLE),
        ([S.INITIALIZED, S.TERMINATED], S.ACTIVE),
    ],
)
async def test_illegal_moves_are_refused_and_change_nothing(
    path: list[AgentState], illegal: AgentState
) -> None:
    lifecycle, heard = await _at(*path)
    before = lifecycle.state

    with pytest.raises(FailedPrecondition, match=f"from {before.value} to {illegal.value}"):
        await lifecycle.move(illegal)

    assert lifecycle.state == before
    assert heard == path


async def test_moving_to_the_current_state_is_a_quiet_no_op() -> None:
    lifecycle, heard = await _at(S.INITIALIZED, S.IDLE)

    await lifecycle.move(S.IDLE)

    assert lifecycle.state == S.IDLE
    assert heard == [S.INITIALIZED, S.IDLE]


async def test_every_listener_hears_every_move() -> None:
    lifecycle = Lifecycle()
    first: list[AgentState] = []
    second: list[AgentState] = []

    async def to_first(state: AgentState) -> None:
        first.append(state)

    async def to_second(state: AgentState) -> None:
        second.append(state)

    lifecycle.on_change(to_first)
    lifecycle.on_change(to_second)
    await lifecycle.move(S.INITIALIZED)
    await lifecycle.move(S.ACTIVE)

    assert first == second == [S.INITIALIZED, S.ACTIVE]


def test_the_agent_serves_only_between_initialized_and_terminated() -> None:
    assert frozenset({S.INITIALIZED, S.ACTIVE, S.IDLE}) == SERVING_STATES
