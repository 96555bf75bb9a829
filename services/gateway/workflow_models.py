"""The JSON shapes of /v1/workflows and /v1/runs."""

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agentry.workflows.v1 import workflows_pb2
from libs.common.errors import InvalidArgument
from services.gateway.models import json_of, time_of

JSON_MEDIA_TYPE = "application/json"
YAML_MEDIA_TYPES = frozenset({"application/yaml", "text/yaml"})
# Versions are int32 in the protos: a larger one cannot even be sent.
MAX_VERSION = 2**31 - 1


def definition_bytes(media_type: str, raw: bytes) -> bytes:
    """What RegisterWorkflow receives: JSON compacted, YAML as sent. The orchestrator validates
    the definition; the gateway only refuses a document it cannot parse."""
    if media_type == JSON_MEDIA_TYPE:
        try:
            return json.dumps(json.loads(raw), separators=(",", ":"), allow_nan=False).encode()
        except ValueError as exc:
            raise InvalidArgument(f"the workflow definition is not valid JSON: {exc}") from None
    try:
        yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"the workflow definition is not valid YAML: {exc}") from None
    return raw


class WorkflowOut(BaseModel):
    name: str
    version: int
    definition: dict[str, Any] | None
    created_at: datetime | None

    @classmethod
    def from_proto(cls, workflow: workflows_pb2.Workflow) -> "WorkflowOut":
        return cls(
            name=workflow.name,
            version=workflow.version,
            definition=json_of(workflow.definition),
            created_at=time_of(workflow, "created_at"),
        )


class WorkflowPage(BaseModel):
    items: list[WorkflowOut]
    next_page_token: str | None


class PageQuery(BaseModel):
    page_size: int = Field(50, ge=1, le=500)
    page_token: str = ""


class RunState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class RunQuery(PageQuery):
    workflow: str | None = None
    state: RunState | None = None

    def to_proto(self) -> workflows_pb2.ListRunsRequest:
        return workflows_pb2.ListRunsRequest(
            workflow=self.workflow or "",
            state=workflows_pb2.RunState.Value(f"RUN_STATE_{self.state}")
            if self.state
            else workflows_pb2.RUN_STATE_UNSPECIFIED,
            page_size=self.page_size,
            page_token=self.page_token,
        )


class StartRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Any = Field(default_factory=dict)
    # Absent or 0: the latest version.
    version: int | None = Field(None, ge=0, le=MAX_VERSION)
    idempotency_key: str | None = Field(None, max_length=200)

    def to_proto(
        self, workflow: str, idempotency_key: str | None = None
    ) -> workflows_pb2.StartRunRequest:
        """`idempotency_key` is the Idempotency-Key header; it may repeat the body's, not
        contradict it."""
        if self.idempotency_key and idempotency_key and self.idempotency_key != idempotency_key:
            raise InvalidArgument(
                "the Idempotency-Key header and the body's idempotency_key differ"
            )
        return workflows_pb2.StartRunRequest(
            workflow=workflow,
            version=self.version or 0,
            input=json.dumps(self.input, separators=(",", ":")).encode(),
            idempotency_key=self.idempotency_key or idempotency_key or "",
        )


class StepRunOut(BaseModel):
    name: str
    state: str
    task_ids: list[str]
    attempts: int
    output: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_proto(cls, step: workflows_pb2.StepRun) -> "StepRunOut":
        return cls(
            name=step.name,
            state=workflows_pb2.StepState.Name(step.state).removeprefix("STEP_STATE_"),
            task_ids=list(step.task_ids),
            attempts=step.attempts,
            output=json_of(step.output),
            error=step.error or None,
            started_at=time_of(step, "started_at"),
            finished_at=time_of(step, "finished_at"),
        )


class RunOut(BaseModel):
    id: str
    workflow: str
    version: int
    state: str
    input: Any
    output: Any
    error: str | None
    steps: list[StepRunOut]
    created_at: datetime | None
    updated_at: datetime | None
    idempotency_key: str | None

    @classmethod
    def from_proto(cls, run: workflows_pb2.Run) -> "RunOut":
        return cls(
            id=run.id,
            workflow=run.workflow,
            version=run.version,
            state=workflows_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_"),
            input=json_of(run.input),
            output=json_of(run.output),
            error=run.error or None,
            steps=[StepRunOut.from_proto(s) for s in run.steps],
            created_at=time_of(run, "created_at"),
            updated_at=time_of(run, "updated_at"),
            idempotency_key=run.idempotency_key or None,
        )


class RunPage(BaseModel):
    items: list[RunOut]
    next_page_token: str | None
