"""The JSON a client sees for workflows and runs, and what it may ask for."""

import json
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from agentry.workflows.v1 import workflows_pb2
from libs.common.errors import InvalidArgument
from services.gateway.workflow_models import (
    PageQuery,
    RunOut,
    RunQuery,
    StartRunIn,
    WorkflowOut,
    definition_bytes,
)

CREATED = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
UPDATED = datetime(2025, 1, 1, 12, 5, 30, 250000, tzinfo=UTC)


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def test_a_workflow_shows_its_definition_as_json() -> None:
    workflow = WorkflowOut.from_proto(
        workflows_pb2.Workflow(
            name="nightly",
            version=3,
            definition=b'{"steps":[{"name":"fetch","task":"echo"}]}',
            created_at=_stamp(CREATED),
        )
    )

    assert workflow.model_dump(mode="json") == {
        "name": "nightly",
        "version": 3,
        "definition": {"steps": [{"name": "fetch", "task": "echo"}]},
        "created_at": "2025-01-01T12:00:00Z",
    }


def test_a_workflow_without_definition_or_time_shows_nulls() -> None:
    workflow = WorkflowOut.from_proto(workflows_pb2.Workflow(name="nightly", version=1))

    assert workflow.definition is None
    assert workflow.created_at is None


def test_a_run_shows_states_without_prefix_decoded_json_and_times() -> None:
    run = RunOut.from_proto(
        workflows_pb2.Run(
            id="0b6f3c1e-5d7a-4c1e-9a53-6c1f4e2d8b90",
            workflow="nightly",
            version=2,
            state=workflows_pb2.RUN_STATE_FAILED,
            input=b'{"day":"2025-01-01"}',
            output=b"[1,2]",
            error="step fetch failed",
            steps=[
                workflows_pb2.StepRun(
                    name="fetch",
                    state=workflows_pb2.STEP_STATE_FAILED,
                    task_ids=["t1", "t2"],
                    attempts=3,
                    output=b'"partial"',
                    error="timeout",
                    started_at=_stamp(CREATED),
                    finished_at=_stamp(UPDATED),
                ),
                workflows_pb2.StepRun(name="report", state=workflows_pb2.STEP_STATE_SKIPPED),
            ],
            created_at=_stamp(CREATED),
            updated_at=_stamp(UPDATED),
            idempotency_key="nightly-2025-01-01",
        )
    )

    assert run.model_dump(mode="json") == {
        "id": "0b6f3c1e-5d7a-4c1e-9a53-6c1f4e2d8b90",
        "workflow": "nightly",
        "version": 2,
        "state": "FAILED",
        "input": {"day": "2025-01-01"},
        "output": [1, 2],
        "error": "step fetch failed",
        "steps": [
            {
                "name": "fetch",
                "state": "FAILED",
                "task_ids": ["t1", "t2"],
                "attempts": 3,
                "output": "partial",
                "error": "timeout",
                "started_at": "2025-01-01T12:00:00Z",
                "finished_at": "2025-01-01T12:05:30.250000Z",
            },
            {
                "name": "report",
                "state": "SKIPPED",
                "task_ids": [],
                "attempts": 0,
                "output": None,
                "error": None,
                "started_at": None,
                "finished_at": None,
            },
        ],
        "created_at": "2025-01-01T12:00:00Z",
        "updated_at": "2025-01-01T12:05:30.250000Z",
        "idempotency_key": "nightly-2025-01-01",
    }


def test_a_fresh_run_shows_empty_fields_as_null() -> None:
    run = RunOut.from_proto(
        workflows_pb2.Run(id="r", workflow="w", version=1, state=workflows_pb2.RUN_STATE_RUNNING)
    )

    assert run.state == "RUNNING"
    assert run.input is None
    assert run.output is None
    assert run.error is None
    assert run.steps == []
    assert run.created_at is None
    assert run.updated_at is None
    assert run.idempotency_key is None


def test_json_null_output_is_null_and_json_false_is_false() -> None:
    run = RunOut.from_proto(workflows_pb2.Run(output=b"false", input=b"null"))

    assert run.output is False
    assert run.input is None


@pytest.mark.parametrize(
    ("name", "proto"),
    [
        ("PENDING", workflows_pb2.STEP_STATE_PENDING),
        ("RUNNING", workflows_pb2.STEP_STATE_RUNNING),
        ("SUCCEEDED", workflows_pb2.STEP_STATE_SUCCEEDED),
        ("CANCELLED", workflows_pb2.STEP_STATE_CANCELLED),
    ],
)
def test_step_states_are_named_without_prefix(name: str, proto: int) -> None:
    run = RunOut.from_proto(workflows_pb2.Run(steps=[workflows_pb2.StepRun(state=proto)]))

    assert run.steps[0].state == name


def test_a_run_is_started_with_the_input_as_compact_json() -> None:
    start = StartRunIn.model_validate({"input": {"a": [1, 2]}, "version": 4}).to_proto("nightly")

    assert start.workflow == "nightly"
    assert start.version == 4
    assert start.input == b'{"a":[1,2]}'
    assert start.idempotency_key == ""


def test_a_run_without_input_or_version_gets_an_empty_object_and_the_latest() -> None:
    start = StartRunIn().to_proto("nightly")

    assert json.loads(start.input) == {}
    assert start.version == 0


def test_the_idempotency_key_comes_from_the_header_or_the_body() -> None:
    assert StartRunIn().to_proto("w", "from-header").idempotency_key == "from-header"
    assert StartRunIn(idempotency_key="from-body").to_proto("w").idempotency_key == "from-body"
    same = StartRunIn(idempotency_key="k").to_proto("w", "k")
    assert same.idempotency_key == "k"


def test_a_header_and_body_idempotency_key_that_disagree_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="differ"):
        StartRunIn(idempotency_key="one").to_proto("w", "two")


@pytest.mark.parametrize(
    "body",
    [{"version": -1}, {"idempotency_key": "k" * 201}, {"inputs": {}}],
)
def test_a_malformed_start_is_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        StartRunIn.model_validate(body)


def test_runs_are_listed_by_state_and_workflow() -> None:
    query = RunQuery.model_validate(
        {"workflow": "nightly", "state": "SUCCEEDED", "page_size": "10", "page_token": "abc"}
    ).to_proto()

    assert query.workflow == "nightly"
    assert query.state == workflows_pb2.RUN_STATE_SUCCEEDED
    assert query.page_size == 10
    assert query.page_token == "abc"


def test_runs_listed_without_filters_ask_for_any_state_and_the_default_page() -> None:
    query = RunQuery().to_proto()

    assert query.workflow == ""
    assert query.state == workflows_pb2.RUN_STATE_UNSPECIFIED
    assert query.page_size == 50


@pytest.mark.parametrize("state", ["PENDING", "running", "RUN_STATE_FAILED", ""])
def test_an_unknown_run_state_is_refused(state: str) -> None:
    with pytest.raises(ValidationError):
        RunQuery.model_validate({"state": state})


@pytest.mark.parametrize("page_size", [0, 501, -1])
def test_a_page_size_out_of_range_is_refused(page_size: int) -> None:
    with pytest.raises(ValidationError):
        PageQuery.model_validate({"page_size": page_size})
    with pytest.raises(ValidationError):
        RunQuery.model_validate({"page_size": page_size})


def test_a_json_definition_is_forwarded_compactly() -> None:
    sent = b'{\n  "steps": [ {"name": "fetch"} ]\n}'

    assert definition_bytes("application/json", sent) == b'{"steps":[{"name":"fetch"}]}'


def test_a_yaml_definition_is_forwarded_as_sent() -> None:
    sent = b"# nightly\nsteps:\n  - name: fetch\n    task: echo\n"

    assert definition_bytes("application/yaml", sent) == sent
    assert definition_bytes("text/yaml", sent) == sent


@pytest.mark.parametrize(
    ("media_type", "sent"),
    [
        ("application/json", b'{"steps": ['),
        ("application/json", b""),
        ("application/json", b'{"x": NaN}'),
        ("application/json", b"\xff\xfe"),
        ("application/yaml", b"steps: [fetch\n"),
        ("text/yaml", b"a: b: c\n"),
        ("application/yaml", b"\xff\xfe\xfd"),
    ],
)
def test_a_definition_that_does_not_parse_is_refused(media_type: str, sent: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid"):
        definition_bytes(media_type, sent)
