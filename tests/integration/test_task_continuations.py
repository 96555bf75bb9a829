"""Continuations through TaskService's API: the tasks a task submits itself once it
succeeds, their payloads built from its result; what cannot be built is left out, and a
submission whose continuations are malformed is refused whole."""

import json
import uuid
from datetime import UTC, datetime

import grpc
import pytest

from agentry.tasks.v1 import tasks_pb2
from libs.common.task_ids import task_id_for
from services.task_agent.model import NewTask, Priority, RetryPolicy
from tests.integration.task_client import spec, stub_for, submit, terminal, until, until_exists

S = tasks_pb2


def _then(*continuations: S.Continuation, context: object = None) -> S.Continuations:
    encoded = json.dumps(context).encode() if context is not None else b""
    return S.Continuations(tasks=continuations, context=encoded)


def _continuation(key: str, template: object, then: S.Continuations | None = None):
    task = spec("echo", idempotency_key=key, labels={"made": "ahead"})
    if then is not None:
        task.then.CopyFrom(then)
    return S.Continuation(task=task, payload_template=json.dumps(template).encode())


async def test_a_task_that_succeeds_submits_its_continuations_built_from_its_result(
    make_task_agent,
) -> None:
    agent = await make_task_agent()
    then = _then(
        _continuation(
            "next",
            {"got": {"$ref": "result.x"}, "who": {"$ref": "who"}},
            _then(_continuation("after-next", {"twice": {"$ref": "result.got"}})),
        ),
        # The result has no "nope": this one cannot be built, and is left out.
        _continuation("never", {"n": {"$ref": "result.nope"}}),
        context={"who": {"name": "ada", "$ref": "who"}},
    )
    async with stub_for(agent) as tasks:
        first = await submit(tasks, "echo", {"x": 5}, then=then)
        assert (await until(tasks, first.id, terminal)).state == S.TASK_STATE_SUCCEEDED
        after_next = await until_exists(tasks, str(task_id_for("after-next")), terminal)
        following = (await tasks.GetTask(S.GetTaskRequest(task_id=str(task_id_for("next"))))).task
        with pytest.raises(grpc.aio.AioRpcError) as never:
            await tasks.GetTask(S.GetTaskRequest(task_id=str(task_id_for("never"))))

    assert following.state == S.TASK_STATE_SUCCEEDED
    # Values put in are data: the "$ref" inside the context's value is not followed.
    assert json.loads(following.payload) == {"got": 5, "who": {"name": "ada", "$ref": "who"}}
    assert following.labels["made"] == "ahead"
    assert after_next.state == S.TASK_STATE_SUCCEEDED
    assert json.loads(after_next.payload) == {"twice": 5}
    assert never.value.code() == grpc.StatusCode.NOT_FOUND


def _nested(depth: int) -> S.Continuations:
    then = _then(_continuation("deepest", None))
    for level in range(depth - 1):
        then = _then(_continuation(f"level-{level}", None, then))
    return then


@pytest.mark.parametrize(
    ("then", "says"),
    [
        (S.Continuations(tasks=[S.Continuation(task=spec("echo"), payload_template=b"{")]),
         "then.tasks[0].payload_template is not JSON"),
        (_then(_continuation("k", {"$ref": 3})), 'a "$ref" object must have exactly one key'),
        (S.Continuations(tasks=[S.Continuation(payload_template=b"1")]),
         "then.tasks[0].task.type is required"),
        (_then(_continuation("k", 1), context=[1]), "then.context must be a JSON object"),
        (_then(_continuation("k", 1), context={"result": 1}), 'without a "result" key'),
        (_nested(9), "nest deeper than 8"),
    ],
)  # fmt: skip
async def test_malformed_continuations_are_refused_and_nothing_is_stored(
    make_task_agent, then: S.Continuations, says: str
) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as tasks:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit(tasks, "echo", {}, then=then)
        listed = await tasks.ListTasks(S.ListTasksRequest())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in refused.value.details()
    assert list(listed.tasks) == []


async def test_eight_levels_of_continuations_are_taken(make_task_agent) -> None:
    agent = await make_task_agent()
    async with stub_for(agent) as tasks:
        await submit(tasks, "echo", {}, then=_nested(8))
        deepest = await until_exists(tasks, str(task_id_for("deepest")), terminal)
    assert deepest.state == S.TASK_STATE_SUCCEEDED


async def test_a_continuation_is_stored_with_its_tasks_result_or_not_at_all(
    make_task_agent,
) -> None:
    """The result and the continuations go in one statement: a result refused as stale (the
    task was taken again meanwhile) stores no continuation; the accepted one does."""
    agent = await make_task_agent()
    store = agent.store
    async with stub_for(agent) as tasks:
        task = await submit(tasks, "echo", {"x": 1}, queue="served-by-nobody")
    task_id = uuid.UUID(task.id)
    [first] = await store.claim([task_id], "task_agent/a", lease_s=30)
    await store.retry(task_id, first.attempts, datetime.now(UTC), "lost", "taken again")
    [second] = await store.claim([task_id], "task_agent/b", lease_s=30)
    following = NewTask(
        type="echo",
        payload=b'{"x":1}',
        queue="served-by-nobody",
        priority=Priority.NORMAL,
        retry=RetryPolicy(),
        timeout_s=60,
        run_at=datetime.now(UTC),
        id=task_id_for("after-stale"),
        idempotency_key="after-stale",
    )

    stale = await store.succeed([(task_id, first.attempts, b"1")], [(task_id, following)])
    assert stale == ([], [])
    assert await store.get(following.id) is None
    [recorded], [stored] = await store.succeed(
        [(task_id, second.attempts, b"2")], [(task_id, following)]
    )
    assert recorded.result == b"2" and stored.id == following.id
    assert (await store.get(following.id)) is not None
