import json

import grpc
import pytest

from agentry.tasks.v1 import tasks_pb2


async def _watch_until_terminal(stub, task_id: str) -> tasks_pb2.Task:
    last = None
    async for update in stub.WatchTask(tasks_pb2.WatchTaskRequest(task_id=task_id)):
        last = update.task
    assert last is not None
    return last


async def test_echo_task_succeeds_with_its_payload_as_result(tasks_stub) -> None:
    payload = {"user": 42, "tags": ["a", "b"]}
    submitted = await tasks_stub.SubmitTask(
        tasks_pb2.SubmitTaskRequest(
            task=tasks_pb2.TaskSpec(type="echo", payload=json.dumps(payload).encode())
        )
    )
    assert submitted.created
    # QUEUED, or RUNNING already when the agent took it eagerly.
    assert submitted.task.state in (tasks_pb2.TASK_STATE_QUEUED, tasks_pb2.TASK_STATE_RUNNING)

    done = await _watch_until_terminal(tasks_stub, submitted.task.id)

    assert done.state == tasks_pb2.TASK_STATE_SUCCEEDED
    assert json.loads(done.result) == payload
    assert done.attempts == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (tasks_pb2.TaskSpec(type="no.such.type"), "unknown task type"),
        (tasks_pb2.TaskSpec(type="echo", payload=b"{not json"), "not valid JSON"),
        (
            tasks_pb2.TaskSpec(type="echo", payload=b'"' + b"x" * (1024 * 1024) + b'"'),
            "over the limit",
        ),
        (
            tasks_pb2.TaskSpec(type="echo", retry=tasks_pb2.RetryPolicy(max_attempts=1000)),
            "max_attempts",
        ),
    ],
)
async def test_bad_submissions_are_refused_and_store_nothing(tasks_stub, spec, message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.SubmitTask(tasks_pb2.SubmitTaskRequest(task=spec))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
    listed = await tasks_stub.ListTasks(tasks_pb2.ListTasksRequest())
    assert list(listed.tasks) == []


async def test_several_tasks_are_read_in_one_call(tasks_stub) -> None:
    specs = [tasks_pb2.TaskSpec(type="echo", payload=json.dumps(n).encode()) for n in range(3)]
    submitted = await tasks_stub.SubmitTasks(tasks_pb2.SubmitTasksRequest(tasks=specs))
    ids = [task.id for task in submitted.tasks]
    for task_id in ids:
        await _watch_until_terminal(tasks_stub, task_id)
    missing = "00000000-0000-4000-8000-000000000000"

    reply = await tasks_stub.GetTasks(tasks_pb2.GetTasksRequest(task_ids=[*ids, missing]))

    assert [task.id for task in reply.tasks] == ids
    assert [json.loads(task.result) for task in reply.tasks] == [0, 1, 2]


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [(["not-a-uuid"], "task_ids"), ([f"{n:032x}" for n in range(1001)], "at most 1000")],
)
async def test_bad_batched_reads_are_refused(tasks_stub, task_ids, message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.GetTasks(tasks_pb2.GetTasksRequest(task_ids=task_ids))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
