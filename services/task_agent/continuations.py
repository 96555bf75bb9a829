"""Continuations: the tasks a task submits itself the moment it succeeds (`TaskSpec.then`),
as a workflow's next steps are started without a round trip through the orchestrator. They
are checked when the task is submitted, stored with it sealed, built from its result, and
stored as tasks by the statement that records it (`TaskStore.succeed`)."""

import json
from collections.abc import Mapping
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from agentry.tasks.v1 import tasks_pb2
from libs.common.errors import InvalidArgument
from libs.common.references import references, resolve

log = structlog.get_logger(__name__)

# Continuations carry continuations of their own, at most this deep.
MAX_DEPTH = 8


def check(then: bytes, max_bytes: int) -> bytes:
    """`then` (an encoded Continuations) as it is stored, or InvalidArgument saying what is
    wrong with it."""
    if len(then) > max_bytes:
        raise InvalidArgument(f"then is {len(then)} bytes, over the limit of {max_bytes}")
    try:
        decoded = tasks_pb2.Continuations.FromString(then)
    except DecodeError:
        raise InvalidArgument("then is not an encoded Continuations message") from None
    if decoded.context:
        try:
            context = json.loads(decoded.context)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(f"then.context is not JSON: {exc}") from None
        if not isinstance(context, dict) or "result" in context:
            raise InvalidArgument('then.context must be a JSON object without a "result" key')
    _check_tasks(decoded.tasks, "then", 1)
    return then


def _check_tasks(tasks: Any, label: str, depth: int) -> None:
    if tasks and depth > MAX_DEPTH:
        raise InvalidArgument(f"continuations nest deeper than {MAX_DEPTH}")
    for index, continuation in enumerate(tasks):
        where = f"{label}.tasks[{index}]"
        if not continuation.task.type:
            raise InvalidArgument(f"{where}.task.type is required")
        try:
            references(json.loads(continuation.payload_template or b"null"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(f"{where}.payload_template is not JSON: {exc}") from None
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}.payload_template: {exc}") from None
        _check_tasks(continuation.task.then.tasks, f"{where}.task.then", depth + 1)


def follow(
    then: bytes, result: bytes | None, trace_context: Mapping[str, str]
) -> list[tasks_pb2.TaskSpec]:
    """The tasks to submit once a task with continuations `then` and `trace_context`
    succeeded with `result`. One whose payload cannot be built from it is left out: its
    submitter, which hears of the task's end, decides what becomes of it."""
    decoded = tasks_pb2.Continuations.FromString(then)
    values = {
        **(json.loads(decoded.context) if decoded.context else {}),
        "result": json.loads(result) if result else None,
    }
    specs = []
    for continuation in decoded.tasks:
        template = json.loads(continuation.payload_template or b"null")
        try:
            payload = resolve(template, values)
        except InvalidArgument as exc:
            log.info(
                "continuation left to its submitter", type=continuation.task.type, why=str(exc)
            )
            continue
        spec = tasks_pb2.TaskSpec()
        spec.CopyFrom(continuation.task)
        spec.payload = json.dumps(payload, separators=(",", ":")).encode()
        if spec.then.tasks and not spec.then.context:
            spec.then.context = decoded.context
        if not spec.trace_context:
            spec.trace_context.update(trace_context)
        specs.append(spec)
    return specs
