"""Workflows run end to end on a real orchestrator and task agent: dependencies, fan-out
and fan-in, skipped steps, failures with on_failure, cancel, retry, idempotent starts, and
TaskService down between recording a step's tasks and submitting them (the task submitted
again later; a cancel that waits for the submission to land)."""

import asyncio
import json

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2
from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from dev.embedded import free_port
from libs.common.redis_client import Keys
from libs.common.task_ids import task_id_for
from tests.integration.task_client import stub_for, terminal, until
from tests.integration.workflow_client import register, start, until_ended
from tests.secure import channel_to

MODULES = ["services.task_agent.builtins", "tests.integration.handlers_for_tests"]
SIGNUP = {
    "name": "signup",
    "steps": [
        {"name": "profile", "type": "echo", "input": {"user": {"$ref": "input.user"}}},
        {
            "name": "avatars",
            "type": "echo",
            "for_each": {"$ref": "input.images"},
            "input": {"img": {"$ref": "item"}},
        },
        {
            "name": "welcome",
            "type": "echo",
            "depends_on": ["profile", "avatars"],
            "input": {
                "who": {"$ref": "steps.profile.output.user"},
                "n": {"$ref": "steps.avatars.output"},
            },
        },
        {"name": "vip", "type": "echo", "depends_on": ["profile"], "when": {"$ref": "input.vip"}},
    ],
}


@pytest.fixture
async def workflows(make_task_agent, make_orchestrator):
    agent = await make_task_agent(handler_modules=MODULES)
    orchestrator = await make_orchestrator(agent)
    async with channel_to(orchestrator.server.port, "orchestrator", role="admin") as channel:
        yield workflows_pb2_grpc.WorkflowServiceStub(channel)


def _steps(run: W.Run) -> dict[str, W.StepRun]:
    return {s.name: s for s in run.steps}


async def test_a_dag_runs_with_fan_out_fan_in_and_a_skipped_step(workflows) -> None:
    registered = await register(workflows, SIGNUP)
    assert registered.version == 1
    started = await start(
        workflows,
        "signup",
        {"user": {"id": 7}, "images": ["a.png", "b.png", "c.png"], "vip": False},
    )
    assert started.created
    run = await until_ended(workflows, started.run.id)
    assert run.state == W.RUN_STATE_SUCCEEDED, run
    steps = _steps(run)
    assert steps["vip"].state == W.STEP_STATE_SKIPPED
    assert json.loads(steps["avatars"].output) == [
        {"img": "a.png"},
        {"img": "b.png"},
        {"img": "c.png"},
    ]
    assert len(steps["avatars"].task_ids) == 3
    assert json.loads(steps["welcome"].output) == {
        "who": {"id": 7},
        "n": [{"img": "a.png"}, {"img": "b.png"}, {"img": "c.png"}],
    }
    assert json.loads(run.output)["welcome"]["who"] == {"id": 7}


async def test_a_new_registration_is_a_new_version_and_old_runs_keep_theirs(workflows) -> None:
    await register(workflows, SIGNUP)
    first = await start(workflows, "signup", {"user": 1, "images": [], "vip": True})
    changed = {**SIGNUP, "steps": SIGNUP["steps"][:1]}
    assert (await register(workflows, changed)).version == 2
    second = await start(workflows, "signup", {"user": 2})
    old, new = (
        await until_ended(workflows, first.run.id),
        await until_ended(workflows, second.run.id),
    )
    assert (old.version, new.version) == (1, 2)
    assert len(old.steps) == 4 and len(new.steps) == 1


async def test_a_bad_definition_is_refused_naming_the_step(workflows) -> None:
    bad = {"name": "bad", "steps": [{"name": "a", "type": "echo", "depends_on": ["nope"]}]}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await register(workflows, bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert '"a"' in refused.value.details() and "nope" in refused.value.details()
    unknown = {"name": "bad", "steps": [{"name": "a", "type": "no.such.type"}]}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await register(workflows, unknown)
    assert "no.such.type" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await workflows.GetWorkflow(W.GetWorkflowRequest(name="bad"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_failed_step_fails_the_run_runs_on_failure_and_can_be_retried(
    workflows, tmp_path
) -> None:
    flaky = {
        "name": "flaky",
        "steps": [
            {"name": "first", "type": "echo", "input": {"ok": True}},
            {
                "name": "charge",
                "type": "needs.file",
                "depends_on": ["first"],
                "input": {"path": {"$ref": "input.card"}},
            },
            {"name": "after", "type": "echo", "depends_on": ["charge"]},
        ],
        "on_failure": {"name": "notify", "type": "echo", "input": {"why": {"$ref": "error"}}},
    }
    await register(workflows, flaky)
    card = tmp_path / "card"
    started = await start(workflows, "flaky", {"card": str(card)})
    run = await until_ended(workflows, started.run.id)
    assert run.state == W.RUN_STATE_FAILED
    steps = _steps(run)
    assert steps["charge"].state == W.STEP_STATE_FAILED
    assert "card is missing" in steps["charge"].error
    assert steps["after"].state == W.STEP_STATE_PENDING
    assert steps["notify"].state == W.STEP_STATE_SUCCEEDED
    assert "card is missing" in json.loads(steps["notify"].output)["why"]
    assert "charge" in run.error

    # The fault is fixed outside; a retry runs the failed step again, then what followed.
    card.touch()
    retried = await workflows.RetryRun(W.RetryRunRequest(run_id=run.id))
    assert retried.run.state == W.RUN_STATE_RUNNING
    again = await until_ended(workflows, run.id)
    assert again.state == W.RUN_STATE_SUCCEEDED, again
    assert _steps(again)["charge"].task_ids != steps["charge"].task_ids
    assert _steps(again)["after"].state == W.STEP_STATE_SUCCEEDED


async def test_a_task_that_task_service_refuses_fails_only_its_own_run(workflows) -> None:
    """Runs started together advance together; a step whose task is refused (its payload
    over the task agent's limit) fails its run, with the reason, and no other run."""
    await register(
        workflows,
        {"name": "copy", "steps": [{"name": "c", "type": "echo", "input": {"$ref": "input.data"}}]},
    )
    runs = await asyncio.gather(
        start(workflows, "copy", {"data": "x" * (2 * 1024 * 1024)}),
        *(start(workflows, "copy", {"data": n}) for n in range(5)),
    )

    refused, *fine = [await until_ended(workflows, r.run.id) for r in runs]
    assert refused.state == W.RUN_STATE_FAILED
    assert "over the limit" in _steps(refused)["c"].error
    assert [json.loads(run.output)["c"] for run in fine] == list(range(5))


async def test_a_run_is_cancelled_with_its_running_tasks(workflows) -> None:
    slow = {"name": "slow", "steps": [{"name": "nap", "type": "sleep", "input": {"seconds": 30}}]}
    await register(workflows, slow)
    started = await start(workflows, "slow", {})
    cancelled = await workflows.CancelRun(W.CancelRunRequest(run_id=started.run.id))
    assert cancelled.run.state == W.RUN_STATE_CANCELLED
    run = (await workflows.GetRun(W.GetRunRequest(run_id=started.run.id))).run
    assert _steps(run)["nap"].state == W.STEP_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await workflows.CancelRun(W.CancelRunRequest(run_id=started.run.id))
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_run_cancelled_before_its_first_task_is_submitted_leaves_no_task_running(
    make_task_agent, make_orchestrator
) -> None:
    """StartRun answers at its commit; the run's first task is submitted after. Here
    TaskService is down then, so the submission is being retried when the cancel comes: the
    cancel waits for it to land (TaskService back on the same address), then cancels the
    task it made. (Had the cancel gone first, it would have found no task, and the
    submission would then have started one nobody stops.)"""
    port = free_port()
    first = await make_task_agent(grpc_port=port)
    orchestrator = await make_orchestrator(first)
    slow = {"name": "slow", "steps": [{"name": "nap", "type": "sleep", "input": {"seconds": 30}}]}
    async with channel_to(orchestrator.server.port, "orchestrator") as channel:
        workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(workflows, slow)
        await first.stop()
        started = await start(workflows, "slow", {})
        cancel = asyncio.ensure_future(
            workflows.CancelRun(W.CancelRunRequest(run_id=started.run.id))
        )
        cancelled = await until_ended(workflows, started.run.id)
        assert cancelled.state == W.RUN_STATE_CANCELLED
        second = await make_task_agent(grpc_port=port, lease_s=1.0)
        await cancel  # answers once the submission landed and its task was cancelled
        run = (await workflows.GetRun(W.GetRunRequest(run_id=started.run.id))).run
    [task_id] = _steps(run)["nap"].task_ids
    async with stub_for(second) as tasks:
        ended = await until(tasks, task_id, terminal)
    assert ended.state == tasks_pb2.TASK_STATE_CANCELLED


async def test_a_start_with_the_same_idempotency_key_is_the_same_run(workflows) -> None:
    await register(workflows, SIGNUP)
    body = {"user": 1, "images": [], "vip": False}
    first = await start(workflows, "signup", body, key="order-42")
    second = await start(workflows, "signup", body, key="order-42")
    assert first.created and not second.created
    assert first.run.id == second.run.id
    listed = await workflows.ListRuns(W.ListRunsRequest(workflow="signup"))
    assert [r.id for r in listed.runs] == [first.run.id]


async def test_starts_that_arrive_together_are_answered_each_on_its_own(workflows) -> None:
    """StartRun calls at the same moment go in one batch: the same key still makes one run,
    and an unknown workflow is refused to its caller alone."""
    await register(workflows, SIGNUP)
    body = {"user": 1, "images": [], "vip": False}
    answers = await asyncio.gather(
        *(start(workflows, "signup", body, key="order-7") for _ in range(4)),
        *(start(workflows, "signup", body) for _ in range(3)),
        start(workflows, "no-such-workflow", body),
        return_exceptions=True,
    )

    *same, other1, other2, other3, unknown = answers
    assert isinstance(unknown, grpc.aio.AioRpcError)
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-workflow" in unknown.details()
    assert len({a.run.id for a in same}) == 1 and sum(a.created for a in same) == 1
    assert len({a.run.id for a in [same[0], other1, other2, other3]}) == 4
    for answer in [same[0], other1, other2, other3]:
        assert (await until_ended(workflows, answer.run.id)).state == W.RUN_STATE_SUCCEEDED


async def test_watch_streams_the_run_until_it_ends_and_events_tell_each_change(
    workflows, redis_url, redis_prefix
) -> None:
    await register(workflows, SIGNUP)
    started = await start(workflows, "signup", {"user": 3, "images": ["x"], "vip": True})
    seen = [
        reply.run async for reply in workflows.WatchRun(W.WatchRunRequest(run_id=started.run.id))
    ]
    assert seen[-1].state == W.RUN_STATE_SUCCEEDED
    assert all(r.state == W.RUN_STATE_RUNNING for r in seen[:-1])
    client = redis.Redis.from_url(redis_url)
    entries = await client.xrange(Keys(redis_prefix).event_stream())
    await client.aclose()
    mine = [
        (e.type, json.loads(e.data).get("step"))
        for _, fields in entries
        for e in events_pb2.EventBatch.FromString(fields[b"e"]).events
        if e.subject == f"run/{started.run.id}"
    ]
    assert mine[0] == ("run.started", None) and mine[-1] == ("run.succeeded", None)
    for step in ("profile", "avatars", "welcome", "vip"):
        # In order: a step's events are published before its task is submitted.
        assert mine.index(("step.started", step)) < mine.index(("step.succeeded", step))


async def test_a_run_past_its_timeout_fails_and_its_tasks_are_cancelled(
    make_task_agent, make_orchestrator
) -> None:
    agent = await make_task_agent()
    orchestrator = await make_orchestrator(agent, reconcile_interval_s=0.2)
    async with channel_to(orchestrator.server.port, "orchestrator") as channel:
        stub = workflows_pb2_grpc.WorkflowServiceStub(channel)
        slow = {
            "name": "slow",
            "timeout_s": 1,
            "steps": [{"name": "nap", "type": "sleep", "input": {"seconds": 30}}],
        }
        await register(stub, slow)
        started = await start(stub, "slow", {})
        run = await until_ended(stub, started.run.id)
    assert run.state == W.RUN_STATE_FAILED
    assert "timed out" in run.error
    assert _steps(run)["nap"].state == W.STEP_STATE_CANCELLED


async def test_a_step_runs_a_child_workflow_per_item_and_takes_its_output(workflows) -> None:
    child = {
        "name": "resize",
        "steps": [
            {"name": "small", "type": "echo", "input": {"img": {"$ref": "input.img"}, "px": 64}},
            {"name": "large", "type": "echo", "depends_on": ["small"],
             "input": {"from": {"$ref": "steps.small.output.img"}, "px": 512}},
        ],
    }  # fmt: skip
    parent = {
        "name": "gallery",
        "steps": [
            {"name": "each", "workflow": "resize", "for_each": {"$ref": "input.images"},
             "input": {"img": {"$ref": "item"}}},
            {"name": "done", "type": "echo", "depends_on": ["each"],
             "input": {"sizes": {"$ref": "steps.each.output"}}},
        ],
    }  # fmt: skip
    await register(workflows, child)
    await register(workflows, parent)
    started = await start(workflows, "gallery", {"images": ["a.png", "b.png"]})
    run = await until_ended(workflows, started.run.id)
    assert run.state == W.RUN_STATE_SUCCEEDED, run
    sizes = json.loads(_steps(run)["done"].output)["sizes"]
    assert sizes == [
        {"large": {"from": "a.png", "px": 512}},
        {"large": {"from": "b.png", "px": 512}},
    ]
    children = [
        (await workflows.GetRun(W.GetRunRequest(run_id=i))).run
        for i in _steps(run)["each"].task_ids
    ]
    assert [c.workflow for c in children] == ["resize", "resize"]
    assert {c.state for c in children} == {W.RUN_STATE_SUCCEEDED}


async def test_an_unknown_or_self_child_workflow_is_refused(workflows) -> None:
    for bad, detail in (
        ({"name": "loop", "steps": [{"name": "me", "workflow": "loop"}]}, "cannot run itself"),
        ({"name": "orphan", "steps": [{"name": "x", "workflow": "nowhere"}]}, "nowhere"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await register(workflows, bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail in refused.value.details()


async def test_cancelling_a_parent_cancels_its_child_runs(workflows) -> None:
    await register(
        workflows,
        {"name": "nap", "steps": [{"name": "z", "type": "sleep", "input": {"seconds": 30}}]},
    )
    await register(workflows, {"name": "outer", "steps": [{"name": "inner", "workflow": "nap"}]})
    started = await start(workflows, "outer", {})
    run = (await workflows.GetRun(W.GetRunRequest(run_id=started.run.id))).run
    [child_id] = _steps(run)["inner"].task_ids
    await workflows.CancelRun(W.CancelRunRequest(run_id=started.run.id))
    child = (await workflows.GetRun(W.GetRunRequest(run_id=child_id))).run
    assert child.state == W.RUN_STATE_CANCELLED
    assert _steps(child)["z"].state == W.STEP_STATE_CANCELLED


async def test_a_step_recorded_but_never_submitted_is_submitted_again_as_the_same_task(
    make_task_agent, make_orchestrator
) -> None:
    """An orchestrator records a step's tasks and commits before it calls SubmitTasks. Here
    TaskService is down through every retry of that call, so the step's task is recorded
    and unknown to TaskService, as if the orchestrator had died in between. Once TaskService
    is back, the reconciler finds the task missing and submits the step again: same key,
    same task id, run once."""
    port = free_port()
    first = await make_task_agent(grpc_port=port)
    orchestrator = await make_orchestrator(first, reconcile_interval_s=0.2, stale_run_s=0.5)
    chain = {
        "name": "chain",
        "steps": [
            {"name": "s1", "type": "echo", "input": {"n": {"$ref": "input.n"}}},
            {"name": "s2", "type": "echo", "depends_on": ["s1"],
             "input": {"got": {"$ref": "steps.s1.output.n"}}},
        ],
    }  # fmt: skip
    async with channel_to(orchestrator.server.port, "orchestrator") as channel:
        workflows = workflows_pb2_grpc.WorkflowServiceStub(channel)
        await register(workflows, chain)
        await first.stop()
        given_up = _unsubmitted()
        started = await start(workflows, "chain", {"n": 5})
        await _until_unsubmitted_past(given_up)
        second = await make_task_agent(grpc_port=port)
        ended = await until_ended(workflows, started.run.id)

    assert ended.state == W.RUN_STATE_SUCCEEDED, ended
    assert json.loads(ended.output) == {"s2": {"got": 5}}
    key = f"run:{started.run.id}:s1:0:1"  # item 0, the run's first attempt
    assert list(_steps(ended)["s1"].task_ids) == [str(task_id_for(key))]
    async with stub_for(second) as tasks:
        listed = (await tasks.ListTasks(tasks_pb2.ListTasksRequest())).tasks
    assert sorted(task.labels["step"] for task in listed) == ["s1", "s2"]
    [s1_task] = [task for task in listed if task.idempotency_key == key]
    assert s1_task.state == tasks_pb2.TASK_STATE_SUCCEEDED
    assert s1_task.attempts == 1


def _unsubmitted() -> float:
    """Tasks this process's orchestrators gave up submitting, so far."""
    return REGISTRY.get_sample_value("agentry_workflow_tasks_unsubmitted_total") or 0.0


async def _until_unsubmitted_past(count: float, within: float = 15.0) -> None:
    """Until an orchestrator gave up submitting tasks (past its retries)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while _unsubmitted() <= count:
        assert loop.time() < deadline, "the orchestrator still tries to submit"
        await asyncio.sleep(0.05)
