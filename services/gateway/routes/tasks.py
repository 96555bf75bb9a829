"""/v1/tasks and /v1/dead-letters: TaskService over REST."""

import json
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response, status

from agentry.tasks.v1 import tasks_pb2
from libs.common.errors import InvalidArgument
from services.gateway.auth import Authorized
from services.gateway.clients import Services
from services.gateway.models import (
    BatchIn,
    BatchOut,
    CancelIn,
    DeadLetterOut,
    DeadLetterPage,
    PurgeIn,
    PurgeOut,
    QueueStatsList,
    QueueStatsOut,
    RedriveIn,
    TaskIn,
    TaskOut,
    TaskPage,
    TaskTypeList,
    TaskTypeOut,
)

router = APIRouter(prefix="/v1", tags=["tasks"])

TaskState = Annotated[
    str | None,
    Query(pattern="^(QUEUED|RUNNING|RETRYING|SUCCEEDED|FAILED|CANCELLED)$"),
]
PageSize = Annotated[int, Query(ge=1, le=500)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Repeating a request with the same key answers what the first one made.",
    ),
]


def _services(request: Request) -> Services:
    return request.app.state.services


@router.post(
    "/tasks",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses={
        status.HTTP_200_OK: {
            "model": TaskOut,
            "description": "The task an earlier request with the same idempotency key created",
        }
    },
)
async def submit_task(
    request: Request,
    response: Response,
    task: TaskIn,
    principal: Authorized,
    idempotency_key: IdempotencyKey = None,
) -> TaskOut:
    if idempotency_key and task.idempotency_key and task.idempotency_key != idempotency_key:
        raise InvalidArgument("the Idempotency-Key header and the body's idempotency_key differ")
    services = _services(request)
    reply = await services.call(
        services.tasks.SubmitTask,
        tasks_pb2.SubmitTaskRequest(task=task.to_proto(idempotency_key)),
    )
    if not reply.created:
        response.status_code = status.HTTP_200_OK
    return TaskOut.from_proto(reply.task)


@router.post("/tasks/batch", status_code=status.HTTP_201_CREATED, response_model=BatchOut)
async def submit_tasks(
    request: Request,
    batch: BatchIn,
    principal: Authorized,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=190,
            description="Task i without a key of its own gets the key `<Idempotency-Key>:i`.",
        ),
    ] = None,
) -> BatchOut:
    # A replay answers 201 too: SubmitTasksResponse does not say which tasks were new.
    services = _services(request)
    specs = [
        t.to_proto(f"{idempotency_key}:{i}" if idempotency_key else None)
        for i, t in enumerate(batch.tasks)
    ]
    reply = await services.call(
        services.tasks.SubmitTasks, tasks_pb2.SubmitTasksRequest(tasks=specs)
    )
    return BatchOut(tasks=[TaskOut.from_proto(t) for t in reply.tasks])


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(request: Request, task_id: str, principal: Authorized) -> TaskOut:
    services = _services(request)
    reply = await services.call(services.tasks.GetTask, tasks_pb2.GetTaskRequest(task_id=task_id))
    return TaskOut.from_proto(reply.task)


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    request: Request,
    principal: Authorized,
    state: TaskState = None,
    type: str | None = None,
    queue: str | None = None,
    page_size: PageSize = 50,
    page_token: str = "",
) -> TaskPage:
    services = _services(request)
    reply = await services.call(
        services.tasks.ListTasks,
        tasks_pb2.ListTasksRequest(
            state=tasks_pb2.TaskState.Value(f"TASK_STATE_{state}")
            if state
            else tasks_pb2.TASK_STATE_UNSPECIFIED,
            type=type or "",
            queue=queue or "",
            page_size=page_size,
            page_token=page_token,
        ),
    )
    return TaskPage(
        items=[TaskOut.from_proto(t) for t in reply.tasks],
        next_page_token=reply.next_page_token or None,
    )


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut)
async def cancel_task(
    request: Request,
    task_id: str,
    principal: Authorized,
    body: Annotated[CancelIn | None, Body()] = None,
) -> TaskOut:
    services = _services(request)
    reply = await services.call(
        services.tasks.CancelTask,
        tasks_pb2.CancelTaskRequest(task_id=task_id, reason=body.reason if body else ""),
    )
    return TaskOut.from_proto(reply.task)


@router.get("/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    request: Request,
    principal: Authorized,
    type: str | None = None,
    queue: str | None = None,
    page_size: PageSize = 50,
    page_token: str = "",
) -> DeadLetterPage:
    services = _services(request)
    reply = await services.call(
        services.tasks.ListDeadLetters,
        tasks_pb2.ListDeadLettersRequest(
            type=type or "", queue=queue or "", page_size=page_size, page_token=page_token
        ),
    )
    return DeadLetterPage(
        items=[DeadLetterOut.from_proto(d) for d in reply.dead_letters],
        next_page_token=reply.next_page_token or None,
    )


@router.post(
    "/dead-letters/{dead_letter_id}/redrive",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
)
async def redrive_dead_letter(
    request: Request,
    dead_letter_id: str,
    principal: Authorized,
    body: Annotated[RedriveIn | None, Body()] = None,
) -> TaskOut:
    services = _services(request)
    redrive = tasks_pb2.RedriveDeadLetterRequest(dead_letter_id=dead_letter_id)
    if body is not None and "payload" in body.model_fields_set:
        redrive.payload = json.dumps(body.payload, separators=(",", ":")).encode()
    reply = await services.call(services.tasks.RedriveDeadLetter, redrive)
    return TaskOut.from_proto(reply.task)


@router.post("/dead-letters/purge", response_model=PurgeOut)
async def purge_dead_letters(request: Request, body: PurgeIn, principal: Authorized) -> PurgeOut:
    services = _services(request)
    purge = tasks_pb2.PurgeDeadLettersRequest(queue=body.queue or "", type=body.type or "")
    if body.older_than is not None:
        purge.older_than.FromDatetime(body.older_than)
    reply = await services.call(services.tasks.PurgeDeadLetters, purge)
    return PurgeOut(purged=reply.purged)


@router.get("/task-types", response_model=TaskTypeList)
async def list_task_types(request: Request, principal: Authorized) -> TaskTypeList:
    services = _services(request)
    reply = await services.call(services.tasks.ListTaskTypes, tasks_pb2.ListTaskTypesRequest())
    return TaskTypeList(items=[TaskTypeOut.from_proto(t) for t in reply.task_types])


@router.get("/queues", response_model=QueueStatsList)
async def queue_stats(request: Request, principal: Authorized) -> QueueStatsList:
    services = _services(request)
    reply = await services.call(services.tasks.GetQueueStats, tasks_pb2.GetQueueStatsRequest())
    return QueueStatsList(
        items=[
            QueueStatsOut(queue=q.queue, depth=q.depth, lag_s=q.lag_s, running=q.running)
            for q in reply.queues
        ]
    )
