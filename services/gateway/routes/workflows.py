"""/v1/workflows and /v1/runs: WorkflowService over REST."""

from typing import Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response, status

from agentry.workflows.v1 import workflows_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services
from services.gateway.workflow_models import (
    JSON_MEDIA_TYPE,
    MAX_VERSION,
    YAML_MEDIA_TYPES,
    PageQuery,
    RunOut,
    RunPage,
    RunQuery,
    StartRunIn,
    WorkflowOut,
    WorkflowPage,
    definition_bytes,
)

router = APIRouter(prefix="/v1")

_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "description": "The workflow definition (steps, schedules, triggers), as JSON or YAML.",
        "content": {
            JSON_MEDIA_TYPE: {"schema": {"type": "object", "additionalProperties": True}},
            **{media: {"schema": {"type": "string"}} for media in sorted(YAML_MEDIA_TYPES)},
        },
    }
}


def _services(request: Request) -> Services:
    return request.app.state.services


@router.put(
    "/workflows/{name}",
    tags=["workflows"],
    status_code=status.HTTP_201_CREATED,
    response_model=WorkflowOut,
    openapi_extra=_DEFINITION_BODY,
)
async def register_workflow(request: Request, name: str, principal: Authorized) -> WorkflowOut:
    # Read by hand: a Body() parameter takes one media type, this route takes two.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE and media_type not in YAML_MEDIA_TYPES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "a workflow definition is application/json, application/yaml or text/yaml",
        )
    definition = definition_bytes(media_type, await request.body())
    services = _services(request)
    reply = await services.call(
        services.workflows.RegisterWorkflow,
        workflows_pb2.RegisterWorkflowRequest(name=name, definition=definition),
    )
    return WorkflowOut.from_proto(reply.workflow)


@router.get("/workflows/{name}", tags=["workflows"], response_model=WorkflowOut)
async def get_workflow(
    request: Request,
    name: str,
    principal: Authorized,
    version: Annotated[int, Query(ge=0, le=MAX_VERSION, description="0 or absent: the latest")] = 0,
) -> WorkflowOut:
    services = _services(request)
    reply = await services.call(
        services.workflows.GetWorkflow,
        workflows_pb2.GetWorkflowRequest(name=name, version=version),
    )
    return WorkflowOut.from_proto(reply.workflow)


@router.get("/workflows", tags=["workflows"], response_model=WorkflowPage)
async def list_workflows(
    request: Request, principal: Authorized, page: Annotated[PageQuery, Query()]
) -> WorkflowPage:
    services = _services(request)
    reply = await services.call(
        services.workflows.ListWorkflows,
        workflows_pb2.ListWorkflowsRequest(page_size=page.page_size, page_token=page.page_token),
    )
    return WorkflowPage(
        items=[WorkflowOut.from_proto(w) for w in reply.workflows],
        next_page_token=reply.next_page_token or None,
    )


@router.post(
    "/workflows/{name}/runs",
    tags=["runs"],
    status_code=status.HTTP_201_CREATED,
    response_model=RunOut,
    responses={
        status.HTTP_200_OK: {
            "model": RunOut,
            "description": "The run an earlier request with the same idempotency key started",
        }
    },
)
async def start_run(
    request: Request,
    response: Response,
    name: str,
    principal: Authorized,
    body: Annotated[StartRunIn | None, Body()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> RunOut:
    start = (body or StartRunIn()).to_proto(name, idempotency_key)
    services = _services(request)
    reply = await services.call(services.workflows.StartRun, start)
    if not reply.created:
        response.status_code = status.HTTP_200_OK
    return RunOut.from_proto(reply.run)


@router.get("/runs/{run_id}", tags=["runs"], response_model=RunOut)
async def get_run(request: Request, run_id: str, principal: Authorized) -> RunOut:
    services = _services(request)
    reply = await services.call(
        services.workflows.GetRun, workflows_pb2.GetRunRequest(run_id=run_id)
    )
    return RunOut.from_proto(reply.run)


@router.get("/runs", tags=["runs"], response_model=RunPage)
async def list_runs(
    request: Request, principal: Authorized, query: Annotated[RunQuery, Query()]
) -> RunPage:
    services = _services(request)
    reply = await services.call(services.workflows.ListRuns, query.to_proto())
    return RunPage(
        items=[RunOut.from_proto(r) for r in reply.runs],
        next_page_token=reply.next_page_token or None,
    )


@router.post("/runs/{run_id}/cancel", tags=["runs"], response_model=RunOut)
async def cancel_run(request: Request, run_id: str, principal: Authorized) -> RunOut:
    services = _services(request)
    reply = await services.call(
        services.workflows.CancelRun, workflows_pb2.CancelRunRequest(run_id=run_id)
    )
    return RunOut.from_proto(reply.run)


@router.post("/runs/{run_id}/retry", tags=["runs"], response_model=RunOut)
async def retry_run(request: Request, run_id: str, principal: Authorized) -> RunOut:
    services = _services(request)
    reply = await services.call(
        services.workflows.RetryRun, workflows_pb2.RetryRunRequest(run_id=run_id)
    )
    return RunOut.from_proto(reply.run)
