"""The analysis step types on the real services: a workflow's analysis.* steps run on the
analysis service (through the task agent's builtins), their outputs feed later steps, bad
input fails the step at once with the analysis service's message, and RunAnalysis refuses
bad requests with INVALID_ARGUMENT."""

import asyncio
import json
import random
from collections.abc import AsyncIterator

import grpc
import pytest

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from agentry.tasks.v1 import tasks_pb2 as S
from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from services.analysis.analyses import MAX_INPUT_BYTES
from services.analysis.app import AnalysisApp
from services.analysis.settings import AnalysisSettings
from tests.integration.task_client import stub_for, submit
from tests.integration.workflow_client import register, start
from tests.secure import channel_to, dev_secrets, security_settings

REVIEW = {
    "name": "incident-review",
    "steps": [
        {
            "name": "latency",
            "type": "analysis.describe",
            "input": {"values": {"$ref": "input.latencies_ms"}},
        },
        {
            "name": "spikes",
            "type": "analysis.anomalies",
            "input": {"values": {"$ref": "input.errors_per_minute"}},
        },
        {
            "name": "logs",
            "type": "analysis.patterns",
            "input": {"lines": {"$ref": "input.log"}, "top": 2},
        },
        {
            # One page per anomalous minute, quoting the latency p95.
            "name": "page",
            "type": "echo",
            "depends_on": ["latency", "spikes"],
            "for_each": {"$ref": "steps.spikes.output.anomalies"},
            "input": {
                "minute": {"$ref": "item.index"},
                "errors": {"$ref": "item.value"},
                "p95_ms": {"$ref": "steps.latency.output.percentiles.p95"},
            },
        },
        {
            "name": "summary",
            "type": "echo",
            "depends_on": ["logs", "page"],
            "input": {
                "pages": {"$ref": "steps.page.output"},
                "top_pattern": {"$ref": "steps.logs.output.clusters.0.fingerprint"},
            },
        },
    ],
}


@pytest.fixture
async def analysis(clean_db: str, redis_url: str, redis_prefix: str) -> AsyncIterator[AnalysisApp]:
    app = AnalysisApp(
        AnalysisSettings(
            database_url=clean_db,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            grpc_port=0,
            migrate_on_start=False,
            instance="analysis-steps",
            log_format="console",
            tls_dir=dev_secrets().tls_dir("analysis"),
            **security_settings(),
        )
    )
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def agent(make_task_agent, analysis: AnalysisApp):
    # The default handler modules: the analysis types are built in.
    return await make_task_agent(analysis_service_address=f"127.0.0.1:{analysis.server.port}")


@pytest.fixture
async def workflows(agent, make_orchestrator):
    orchestrator = await make_orchestrator(agent)
    async with channel_to(orchestrator.server.port, "orchestrator", role="admin") as channel:
        yield workflows_pb2_grpc.WorkflowServiceStub(channel)


async def _ended(workflows, run_id: str) -> W.Run:
    """The run once it has ended, as WatchRun streams it."""
    async with asyncio.timeout(30):
        updates = [u.run async for u in workflows.WatchRun(W.WatchRunRequest(run_id=run_id))]
    return updates[-1]


def _steps(run: W.Run) -> dict[str, W.StepRun]:
    return {s.name: s for s in run.steps}


def _errors_per_minute() -> list[float]:
    rng = random.Random(7)
    minutes = [round(20 + rng.gauss(0, 2), 1) for _ in range(60)]
    minutes[42] = 90.0
    return minutes


async def test_a_workflow_of_analysis_steps_runs_and_later_steps_use_their_outputs(
    workflows,
) -> None:
    await register(workflows, REVIEW)
    log = [
        "timeout calling payments after 30s (order ord_1a2b3)",
        "user 17 logged in",
        "timeout calling payments after 31s (order ord_9z8y7)",
        "timeout calling payments after 29s (order ord_5k5k5)",
        "user 4411 logged in",
        "disk /var/lib/pg at 91%",
    ]
    started = await start(
        workflows,
        "incident-review",
        {
            "latencies_ms": list(range(1, 101)),
            "errors_per_minute": _errors_per_minute(),
            "log": log,
        },
    )

    run = await _ended(workflows, started.run.id)

    assert run.state == W.RUN_STATE_SUCCEEDED, run
    steps = _steps(run)
    latency = json.loads(steps["latency"].output)
    assert [latency[k] for k in ("count", "min", "max", "mean")] == [100, 1, 100, 50.5]
    assert latency["percentiles"]["p95"] == pytest.approx(95.05)
    spikes = json.loads(steps["spikes"].output)
    assert spikes["count"] == 60
    assert [a["index"] for a in spikes["anomalies"]] == [42]
    assert spikes["anomalies"][0]["value"] == 90.0
    assert spikes["anomalies"][0]["expected"] == pytest.approx(20, abs=3)
    logs = json.loads(steps["logs"].output)
    assert (logs["lines"], logs["distinct"]) == (6, 3)
    assert [(c["count"], c["example"]) for c in logs["clusters"]] == [(3, log[0]), (2, log[1])]
    assert json.loads(steps["page"].output) == [
        {"minute": 42, "errors": 90.0, "p95_ms": pytest.approx(95.05)}
    ]
    summary = json.loads(steps["summary"].output)
    assert summary["top_pattern"] == logs["clusters"][0]["fingerprint"]
    assert "ord_" not in summary["top_pattern"]


async def test_bad_input_fails_the_step_at_once_naming_what_is_wrong(workflows) -> None:
    await register(workflows, REVIEW)
    started = await start(
        workflows,
        "incident-review",
        {"latencies_ms": [12, "slow", 30], "errors_per_minute": [1, 2, 3], "log": ["ok"]},
    )

    run = await _ended(workflows, started.run.id)

    assert run.state == W.RUN_STATE_FAILED
    steps = _steps(run)
    assert steps["latency"].state == W.STEP_STATE_FAILED
    assert steps["latency"].error == "analysis.describe: values[1] is not a number: 'slow'"
    # A permanent error: no retry.
    assert steps["latency"].attempts == 1
    assert "latency" in run.error


async def test_an_analysis_is_a_plain_task_too(agent) -> None:
    async with stub_for(agent) as stub:
        task = await submit(stub, "analysis.describe", {"values": [3, 1, 2]})
        async with asyncio.timeout(10):
            async for update in stub.WatchTask(S.WatchTaskRequest(task_id=task.id)):
                task = update.task

        bad = await submit(stub, "analysis.patterns", {"lines": [], "top": 3})
        async with asyncio.timeout(10):
            async for update in stub.WatchTask(S.WatchTaskRequest(task_id=bad.id)):
                bad = update.task

    assert task.state == S.TASK_STATE_SUCCEEDED
    assert json.loads(task.result)["percentiles"]["p50"] == 2
    assert bad.state == S.TASK_STATE_FAILED
    assert bad.attempts == 1
    assert bad.error.reason == "non_retryable"
    assert bad.error.message == "analysis.patterns: lines is empty"


@pytest.mark.parametrize(
    ("kind", "document", "message"),
    [
        ("analysis.forecast", b'{"values": [1]}', "unknown analysis kind 'analysis.forecast'"),
        ("analysis.anomalies", b'{"values": []}', "analysis.anomalies: values is empty"),
        (
            "analysis.anomalies",
            b'{"values": [1, "x"]}',
            "analysis.anomalies: values[1] is not a number: 'x'",
        ),
        (
            "analysis.describe",
            b'{"values": [' + b"1," * MAX_INPUT_BYTES + b"1]}",
            f"over the limit of {MAX_INPUT_BYTES}",
        ),
    ],
)
async def test_run_analysis_refuses_bad_requests_with_invalid_argument(
    analysis: AnalysisApp, kind: str, document: bytes, message: str
) -> None:
    async with channel_to(analysis.server.port, "analysis", role="admin") as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RunAnalysis(analysis_pb2.RunAnalysisRequest(kind=kind, input=document))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
