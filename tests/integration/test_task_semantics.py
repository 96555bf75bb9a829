"""What TaskService promises its clients, through the real gRPC API of a running agent:
batches, idempotency, retries, dead letters, fallbacks, timeouts, cancellation, delays,
listing."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import grpc
import pytest
import redis.asyncio as redis

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.redis_client import Keys
from libs.common.task_ids import task_id_for
from services.task_agent.app import TaskAgentApp
from tests.integration.task_client import spec, submit, until
from tests.secure import channel_to

S = tasks_pb2
QUICK_RETRY = S.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02)


def _retry(max_attempts: int) -> tasks_pb2.RetryPolicy:
    policy = S.RetryPolicy()
    policy.CopyFrom(QUICK_RETRY)
    policy.max_attempts = max_attempts
    return policy


async def _finished(stub, task_id: str, within: float = 5.0) -> tasks_pb2.Task:
    """The task once terminal, as WatchTask streams it."""
    last = None
    async with asyncio.timeout(within):
        async for update in stub.WatchTask(S.WatchTaskRequest(task_id=task_id)):
            last = update.task
    assert last is not None
    return last


async def _all_tasks(stub, **filters: object) -> list[tasks_pb2.Task]:
    found: list[tasks_pb2.Task] = []
    token = ""
    while True:
        page = await stub.ListTasks(S.ListTasksRequest(page_token=token, **filters))
        found += page.tasks
        token = page.next_page_token
        if not token:
            return found


@asynccontextmanager
async def _stub_for(app: TaskAgentApp) -> AsyncIterator[tasks_pb2_grpc.TaskServiceStub]:
    async with channel_to(app.server.port) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)


async def _events_about(redis_url: str, prefix: str, task_id: str) -> list[str]:
    """The types of the events on the durable event stream whose subject is the task."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(Keys(prefix).event_stream())
    finally:
        await client.aclose()
    events = [
        event
        for _, fields in entries
        for event in events_pb2.EventBatch.FromString(fields[b"e"]).events
    ]
    return [e.type for e in events if e.subject == f"task/{task_id}"]


# Submission


async def test_a_batch_is_answered_in_request_order_and_every_task_succeeds(tasks_stub) -> None:
    payloads = [{"n": n} for n in range(5)]

    response = await tasks_stub.SubmitTasks(
        S.SubmitTasksRequest(tasks=[spec("echo", p) for p in payloads])
    )

    assert [json.loads(t.payload) for t in response.tasks] == payloads
    assert len({t.id for t in response.tasks}) == len(payloads)
    done = [await _finished(tasks_stub, t.id) for t in response.tasks]
    assert [t.state for t in done] == [S.TASK_STATE_SUCCEEDED] * len(payloads)
    assert [json.loads(t.result) for t in done] == payloads


async def test_a_keyed_task_has_the_id_its_key_gives_and_a_resubmission_returns_it(
    tasks_stub,
) -> None:
    first = await tasks_stub.SubmitTask(
        S.SubmitTaskRequest(task=spec("echo", {"order": 1}, idempotency_key="order-1"))
    )
    second = await tasks_stub.SubmitTask(
        S.SubmitTaskRequest(task=spec("echo", {"order": "other"}, idempotency_key="order-1"))
    )

    assert first.created
    assert not second.created
    assert first.task.id == second.task.id == str(task_id_for("order-1"))
    assert json.loads(second.task.payload) == {"order": 1}
    assert [t.id for t in await _all_tasks(tasks_stub)] == [first.task.id]
    done = await _finished(tasks_stub, first.task.id)
    assert done.attempts == 1


async def test_a_repeated_idempotency_key_within_one_batch_stores_one_task(tasks_stub) -> None:
    response = await tasks_stub.SubmitTasks(
        S.SubmitTasksRequest(
            tasks=[
                spec("echo", 1, idempotency_key="same"),
                spec("echo", 2, idempotency_key="same"),
            ]
        )
    )

    first, second = response.tasks
    assert first.id == second.id == str(task_id_for("same"))
    assert [json.loads(t.payload) for t in response.tasks] == [1, 1]
    assert len(await _all_tasks(tasks_stub)) == 1
    done = await _finished(tasks_stub, first.id)
    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 1
    assert json.loads(done.result) == 1


async def test_a_batch_with_one_bad_spec_is_refused_whole_and_stores_nothing(tasks_stub) -> None:
    batch = [spec("echo", 1), spec("echo", 2), spec("no.such.type"), spec("echo", 4)]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.SubmitTasks(S.SubmitTasksRequest(tasks=batch))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("tasks[2]: unknown task type 'no.such.type'")
    assert await _all_tasks(tasks_stub) == []


# Retries, dead letters, fallbacks, timeouts


async def test_a_failing_task_is_retried_until_it_succeeds(
    tasks_stub, redis_url: str, redis_prefix: str
) -> None:
    task = await submit(tasks_stub, "fail", {"times": 2}, retry=_retry(3))

    done = await _finished(tasks_stub, task.id)

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 3
    assert json.loads(done.result) == {"succeeded_on_attempt": 3}
    events = await _events_about(redis_url, redis_prefix, task.id)
    assert events.count("task.retrying") == 2
    assert events[-1] == "task.succeeded"


async def test_exhausted_retries_dead_letter_the_task_which_can_be_redriven_once(
    tasks_stub,
) -> None:
    task = await submit(tasks_stub, "fail", {"times": 5}, retry=_retry(2))

    failed = await _finished(tasks_stub, task.id)

    assert failed.state == S.TASK_STATE_FAILED
    assert failed.attempts == 2
    assert failed.error.reason == "retries_exhausted"
    assert failed.error.kind == "RetryableError"
    letters = (await tasks_stub.ListDeadLetters(S.ListDeadLettersRequest())).dead_letters
    assert [(d.task.id, d.reason, d.redriven_task_id) for d in letters] == [
        (task.id, "retries_exhausted", "")
    ]

    redriven = await tasks_stub.RedriveDeadLetter(
        S.RedriveDeadLetterRequest(dead_letter_id=letters[0].id, payload=b'{"times": 0}')
    )

    assert redriven.task.id != task.id
    assert redriven.task.parent_id == task.id
    done = await _finished(tasks_stub, redriven.task.id)
    assert done.state == S.TASK_STATE_SUCCEEDED
    assert json.loads(done.result) == {"succeeded_on_attempt": 1}
    letters = (await tasks_stub.ListDeadLetters(S.ListDeadLettersRequest())).dead_letters
    assert [d.redriven_task_id for d in letters] == [redriven.task.id]

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await tasks_stub.RedriveDeadLetter(S.RedriveDeadLetterRequest(dead_letter_id=letters[0].id))

    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert redriven.task.id in again.value.details()


async def test_a_non_retryable_failure_ends_the_task_after_one_attempt(tasks_stub) -> None:
    task = await submit(
        tasks_stub, "fail", {"times": 1, "retryable": False, "message": "bad card"}, retry=_retry(5)
    )

    done = await _finished(tasks_stub, task.id)

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 1
    assert done.error.reason == "non_retryable"
    assert done.error.message == "bad card"


async def test_a_task_that_exhausts_its_retries_hands_its_payload_to_its_fallback(
    tasks_stub,
) -> None:
    payload = {"times": 5, "order": 77}
    task = await submit(tasks_stub, "fail", payload, retry=_retry(2), fallback_type="echo")

    failed = await _finished(tasks_stub, task.id)

    assert failed.state == S.TASK_STATE_FAILED
    assert failed.error.reason == "retries_exhausted"
    [fallback] = await _all_tasks(tasks_stub, type="echo")
    assert fallback.parent_id == task.id
    done = await _finished(tasks_stub, fallback.id)
    assert done.state == S.TASK_STATE_SUCCEEDED
    assert json.loads(done.payload) == payload
    assert json.loads(done.result) == payload
    letters = (await tasks_stub.ListDeadLetters(S.ListDeadLettersRequest())).dead_letters
    assert list(letters) == []


async def test_an_attempt_over_its_timeout_fails_the_task_as_timed_out(tasks_stub) -> None:
    task = await submit(tasks_stub, "sleep", {"seconds": 5}, timeout_s=0.2, retry=_retry(1))

    done = await _finished(tasks_stub, task.id)

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 1
    assert done.error.reason == "timeout"
    assert done.result == b""


# Cancellation


async def test_cancelling_a_queued_task_cancels_it_at_once(tasks_stub) -> None:
    task = await submit(tasks_stub, "echo", "later", delay_s=60)

    cancelled = await tasks_stub.CancelTask(S.CancelTaskRequest(task_id=task.id, reason="no more"))

    assert cancelled.task.state == S.TASK_STATE_CANCELLED
    assert cancelled.task.error.reason == "cancelled"
    assert cancelled.task.error.message == "no more"
    now = (await tasks_stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
    assert now.state == S.TASK_STATE_CANCELLED
    assert now.attempts == 0


async def test_cancelling_a_running_task_stops_its_handler(make_task_agent) -> None:
    agent = await make_task_agent(lease_s=0.6)
    async with _stub_for(agent) as stub:
        task = await submit(stub, "sleep", {"seconds": 30})
        await until(stub, task.id, lambda t: t.state == S.TASK_STATE_RUNNING)

        asked = await stub.CancelTask(S.CancelTaskRequest(task_id=task.id))

        assert asked.task.state == S.TASK_STATE_RUNNING
        done = await _finished(stub, task.id)
        assert done.state == S.TASK_STATE_CANCELLED
        assert done.error.reason == "cancelled"
        assert done.result == b""
        assert agent.worker.in_hand == 0


async def test_cancelling_a_finished_task_is_refused(tasks_stub) -> None:
    task = await submit(tasks_stub, "echo", "done")
    await _finished(tasks_stub, task.id)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.CancelTask(S.CancelTaskRequest(task_id=task.id))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SUCCEEDED" in refused.value.details()
    now = (await tasks_stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
    assert now.state == S.TASK_STATE_SUCCEEDED


async def test_cancelling_an_unknown_task_is_not_found(tasks_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.CancelTask(S.CancelTaskRequest(task_id=str(uuid.uuid4())))

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# Delays


async def test_a_delayed_task_waits_its_delay_then_runs(tasks_stub) -> None:
    task = await submit(tasks_stub, "echo", "later", delay_s=1.0)

    waiting = (await tasks_stub.GetTask(S.GetTaskRequest(task_id=task.id))).task
    assert waiting.state == S.TASK_STATE_QUEUED
    done = await _finished(tasks_stub, task.id)

    assert done.state == S.TASK_STATE_SUCCEEDED
    created, started = done.created_at.ToDatetime(), done.started_at.ToDatetime()
    assert done.run_at.ToDatetime() - created == timedelta(seconds=1)
    assert started >= done.run_at.ToDatetime()


# Reading


async def test_list_tasks_pages_through_every_task_once_and_filters(tasks_stub) -> None:
    specs = [
        spec("echo", 0),
        spec("fail", {"times": 1, "retryable": False}),
        spec("echo", 2),
        spec("fail", {"times": 1, "retryable": False}),
        spec("echo", 4),
    ]
    submitted = (await tasks_stub.SubmitTasks(S.SubmitTasksRequest(tasks=specs))).tasks
    for task in submitted:
        await _finished(tasks_stub, task.id)
    echo_ids = {t.id for t in submitted if t.type == "echo"}
    fail_ids = {t.id for t in submitted if t.type == "fail"}

    pages = []
    token = ""
    while True:
        page = await tasks_stub.ListTasks(S.ListTasksRequest(page_size=2, page_token=token))
        pages.append([t.id for t in page.tasks])
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [task_id for page in pages for task_id in page]
    assert sorted(seen) == sorted(t.id for t in submitted)

    def ids(tasks: list[tasks_pb2.Task]) -> list[str]:
        return sorted(t.id for t in tasks)

    assert ids(await _all_tasks(tasks_stub, page_size=2, type="echo")) == sorted(echo_ids)
    assert ids(await _all_tasks(tasks_stub, page_size=2, state=S.TASK_STATE_FAILED)) == sorted(
        fail_ids
    )
    succeeded_echo = await _all_tasks(
        tasks_stub, page_size=2, type="echo", state=S.TASK_STATE_SUCCEEDED
    )
    assert ids(succeeded_echo) == sorted(echo_ids)
    assert await _all_tasks(tasks_stub, type="fail", state=S.TASK_STATE_SUCCEEDED) == []


async def test_a_bad_page_token_is_refused(tasks_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks_stub.ListTasks(S.ListTasksRequest(page_token="not-a-token"))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_task_of_a_malformed_id_is_invalid_and_of_an_unknown_one_not_found(
    tasks_stub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await tasks_stub.GetTask(S.GetTaskRequest(task_id="not-a-uuid"))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await tasks_stub.GetTask(S.GetTaskRequest(task_id=str(uuid.uuid4())))

    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not-a-uuid" in malformed.value.details()
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
