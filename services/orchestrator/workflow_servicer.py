"""WorkflowService over gRPC: protobuf in, a call on the runs, protobuf out."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentry.workflows.v1 import workflows_pb2 as W
from agentry.workflows.v1 import workflows_pb2_grpc
from libs.common.events import EventBus
from libs.common.paging import check_page_size, page_token, parse_page_token
from services.orchestrator.dag import RunState
from services.orchestrator.run_store import RunRecord
from services.orchestrator.runs import RunDetail, Runs
from services.orchestrator.workflow_store import WorkflowRecord


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _json(value: Any) -> bytes:
    return b"" if value is None else json.dumps(value, separators=(",", ":")).encode()


def workflow_to_proto(record: WorkflowRecord) -> W.Workflow:
    return W.Workflow(
        name=record.name,
        version=record.version,
        definition=record.definition,
        created_at=_timestamp(record.created_at),
    )


def run_to_proto(run: RunRecord, detail: RunDetail | None = None) -> W.Run:
    message = W.Run(
        id=str(run.id),
        workflow=run.workflow,
        version=run.version,
        state=W.RunState.Value(f"RUN_STATE_{run.state.value}"),
        input=_json(run.input),
        output=_json(run.output),
        error=run.error,
        created_at=_timestamp(run.created_at),
        updated_at=_timestamp(run.updated_at),
        idempotency_key=run.idempotency_key or "",
    )
    for step in detail.steps if detail else ():
        message.steps.append(
            W.StepRun(
                name=step.view.name,
                state=W.StepState.Value(f"STEP_STATE_{step.view.state.value}"),
                task_ids=[str(t) for t in step.task_ids],
                attempts=step.view.attempts,
                output=_json(step.view.output),
                error=step.view.error,
                started_at=_timestamp(step.started_at),
                finished_at=_timestamp(step.finished_at),
            )
        )
    return message


class WorkflowServicer(workflows_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, runs: Runs, events: EventBus) -> None:
        self._runs = runs
        self._events = events

    async def RegisterWorkflow(
        self, request: W.RegisterWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> W.RegisterWorkflowResponse:
        record = await self._runs.register(request.name, request.definition)
        return W.RegisterWorkflowResponse(workflow=workflow_to_proto(record))

    async def GetWorkflow(
        self, request: W.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> W.GetWorkflowResponse:
        record = await self._runs.workflow(request.name, request.version)
        return W.GetWorkflowResponse(workflow=workflow_to_proto(record))

    async def ListWorkflows(
        self, request: W.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> W.ListWorkflowsResponse:
        size = check_page_size(request.page_size)
        found = await self._runs.workflows(request.page_token, size)
        token = found[-1].name if len(found) == size else ""
        return W.ListWorkflowsResponse(
            workflows=[workflow_to_proto(r) for r in found], next_page_token=token
        )

    async def StartRun(
        self, request: W.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> W.StartRunResponse:
        run, created = await self._runs.start(
            request.workflow, request.version, request.input, request.idempotency_key
        )
        return W.StartRunResponse(run=run_to_proto(run), created=created)

    async def GetRun(
        self, request: W.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> W.GetRunResponse:
        detail = await self._runs.get(request.run_id)
        return W.GetRunResponse(run=run_to_proto(detail.run, detail))

    async def ListRuns(
        self, request: W.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> W.ListRunsResponse:
        size = check_page_size(request.page_size)
        state = None
        if request.state:
            state = RunState(W.RunState.Name(request.state).removeprefix("RUN_STATE_"))
        found = await self._runs.find(
            request.workflow, state, parse_page_token(request.page_token), size
        )
        token = page_token((found[-1].created_at, found[-1].id)) if len(found) == size else ""
        return W.ListRunsResponse(runs=[run_to_proto(r) for r in found], next_page_token=token)

    async def CancelRun(
        self, request: W.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> W.CancelRunResponse:
        return W.CancelRunResponse(run=run_to_proto(await self._runs.cancel(request.run_id)))

    async def RetryRun(
        self, request: W.RetryRunRequest, context: grpc.aio.ServicerContext
    ) -> W.RetryRunResponse:
        return W.RetryRunResponse(run=run_to_proto(await self._runs.retry(request.run_id)))

    async def WatchRun(
        self, request: W.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[W.WatchRunResponse]:
        """The run as it is, then again after each of its events, until it ends."""
        subject = f"run/{request.run_id}"
        async with self._events.subscribe() as subscription:
            detail = await self._runs.get(request.run_id)
            yield W.WatchRunResponse(run=run_to_proto(detail.run, detail))
            while detail.run.state == RunState.RUNNING:
                # A change may also come while the subscription starts: look again at times.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscription.next_for(subject), timeout=5.0)
                detail = await self._runs.get(request.run_id)
                yield W.WatchRunResponse(run=run_to_proto(detail.run, detail))
