"""The orchestrator's calls to TaskService, over mTLS as the `orchestrator` identity."""

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.channels import ServiceChannel
from libs.common.grpc_errors import from_rpc_error
from libs.common.identity import AgentIdentity
from services.orchestrator.definition import StepDef

# SubmitTasks takes at most this many specs per call, GetTasks this many ids.
BATCH = 1000


# The state of a step's task TaskService does not know: the orchestrator recorded it and
# stopped before it was submitted. Its step submits it again.
LOST = "LOST"


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, as the run records it on its step."""

    task_id: uuid.UUID
    state: str  # SUCCEEDED, FAILED, CANCELLED, or LOST
    output: Any = None
    error: str = ""
    # The tasks a task agent submitted as its continuations (see continuations.py).
    continued: frozenset[uuid.UUID] = frozenset()


def step_key(run_id: uuid.UUID, step: str, item: int, attempt: int) -> str:
    """The idempotency key of a step's task: resubmitting it (after a crash, by another
    orchestrator, after an agent started it as a continuation) finds the same task."""
    return f"run:{run_id}:{step}:{item}:{attempt}"


def task_spec(
    step: StepDef,
    payload: Any,
    run_id: uuid.UUID,
    item: int,
    attempt: int,
    trace_context: dict[str, str],
) -> tasks_pb2.TaskSpec:
    spec = tasks_pb2.TaskSpec(
        type=step.type,
        payload=json.dumps(payload, separators=(",", ":")).encode(),
        idempotency_key=step_key(run_id, step.name, item, attempt),
        labels={"run": str(run_id), "step": step.name},
        timeout_s=step.timeout_s or 0,
        fallback_type=step.fallback or "",
        queue=step.queue or "",
        trace_context=trace_context,
    )
    if step.retry is not None:
        spec.retry.CopyFrom(
            tasks_pb2.RetryPolicy(
                max_attempts=step.retry.max_attempts,
                initial_backoff_s=step.retry.initial_backoff_s,
                max_backoff_s=step.retry.max_backoff_s,
            )
        )
    return spec


def task_end(task: tasks_pb2.Task) -> TaskEnd | None:
    """None while the task has not ended."""
    task_id = uuid.UUID(task.id)
    if task.state == tasks_pb2.TASK_STATE_SUCCEEDED:
        return TaskEnd(task_id, "SUCCEEDED", json.loads(task.result) if task.result else None)
    if task.state == tasks_pb2.TASK_STATE_FAILED:
        return TaskEnd(task_id, "FAILED", error=task.error.message or task.error.reason)
    if task.state == tasks_pb2.TASK_STATE_CANCELLED:
        return TaskEnd(task_id, "CANCELLED", error="cancelled")
    return None


class CancelHold:
    """Tasks on their way to SubmitTasks, from before the commit that records them until
    they land: a cancel of one waits meanwhile (one that found no task would let the
    submission that follows run it). Around the transaction, it ends with it if that fails;
    else `release` ends it, once the tasks are submitted."""

    def __init__(self, submitting: dict[uuid.UUID, asyncio.Future[None]]) -> None:
        self._submitting = submitting
        self._landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task_ids: list[uuid.UUID] = []

    def take(self, task_ids: Sequence[uuid.UUID]) -> None:
        self._task_ids += task_ids
        for task_id in task_ids:
            self._submitting[task_id] = self._landed

    def release(self) -> None:
        for task_id in self._task_ids:
            if self._submitting.get(task_id) is self._landed:
                del self._submitting[task_id]
        if not self._landed.done():
            self._landed.set_result(None)

    def __enter__(self) -> "CancelHold":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.release()


class TaskClient:
    def __init__(self, address: str, identity: AgentIdentity | None, timeout_s: float) -> None:
        self._channel = ServiceChannel(address, "task-agent", identity)
        self._timeout_s = timeout_s
        # Tasks on their way to SubmitTasks: a cancel of one waits for them to land.
        self._submitting: dict[uuid.UUID, asyncio.Future[None]] = {}

    @property
    def _stub(self) -> tasks_pb2_grpc.TaskServiceStub:
        return self._channel.stub(tasks_pb2_grpc.TaskServiceStub)

    def hold(self) -> CancelHold:
        return CancelHold(self._submitting)

    async def submit(self, specs: Sequence[tasks_pb2.TaskSpec]) -> None:
        """Submits the tasks; a keyed one's id is known already (it derives from its key),
        and a key submitted before finds its task."""
        for start in range(0, len(specs), BATCH):
            request = tasks_pb2.SubmitTasksRequest(tasks=specs[start : start + BATCH])
            try:
                await self._stub.SubmitTasks(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None

    async def ends(self, task_ids: Sequence[uuid.UUID]) -> list[TaskEnd]:
        """How those of `task_ids` that have ended ended; those TaskService does not know
        are LOST."""
        ends: list[TaskEnd] = []
        for start in range(0, len(task_ids), BATCH):
            asked = task_ids[start : start + BATCH]
            request = tasks_pb2.GetTasksRequest(task_ids=[str(t) for t in asked])
            try:
                reply = await self._stub.GetTasks(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
            found = {uuid.UUID(task.id): task for task in reply.tasks}
            for task_id in asked:
                task = found.get(task_id)
                end = task_end(task) if task is not None else TaskEnd(task_id, LOST)
                if end is not None:
                    ends.append(end)
        return ends

    async def cancel(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Cancels tasks, once those on their way to SubmitTasks have landed (a run can be
        cancelled between the commit that records a step's tasks and their submission)."""
        landing = {self._submitting[t] for t in task_ids if t in self._submitting}
        if landing:
            await asyncio.wait(landing)

        async def one(task_id: uuid.UUID) -> None:
            try:
                await self._stub.CancelTask(
                    tasks_pb2.CancelTaskRequest(task_id=str(task_id)), timeout=self._timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    raise from_rpc_error(exc) from None

        await asyncio.gather(*(one(t) for t in task_ids))

    async def task_types(self) -> set[str]:
        try:
            reply = await self._stub.ListTaskTypes(
                tasks_pb2.ListTaskTypesRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return {t.name for t in reply.task_types}

    async def close(self) -> None:
        await self._channel.close()
