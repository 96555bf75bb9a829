"""Steps a task agent starts itself, as continuations of the task of the step before
(`TaskSpec.then`): a chain link (see `WorkflowDef.chained_after`) starts the moment that
task succeeds, as Celery's chains do, not after a round trip through the orchestrator.

The orchestrator stays the source of truth. It records each step as before, with the same
idempotency key, so the task the agent started is the step's task; it submits the step
itself unless the end it advances on says the agent did. An end of such a task may come
before the end of the task before it: the step is recorded then. And a run that ended, or
stopped starting steps, cancels what the agent started ahead of it."""

import json
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from agentry.tasks.v1 import tasks_pb2
from libs.common.references import replace_refs
from libs.common.task_ids import task_id_for
from services.orchestrator.dag import Item, StepState
from services.orchestrator.definition import StepDef, WorkflowDef
from services.orchestrator.run_store import RunRecord, StepTask
from services.orchestrator.task_client import LOST, TaskEnd, step_key, task_spec

# Chain links started ahead, at most this many (the task agent takes 8 levels).
DEPTH = 8
# A run whose input is larger than this starts its steps through the orchestrator alone:
# the continuations would carry it in each step's task.
MAX_INPUT_BYTES = 16 * 1024


def _template(template: Any, after: str) -> Any:
    """`template` with its references to step `after`'s output made references to the
    result of its task."""
    output = f"steps.{after}.output"
    return replace_refs(
        template,
        lambda ref: {"$ref": "result" + ref[len(output) :] if ref.startswith(output) else ref},
    )


def _link_id(run: RunRecord, step: str) -> uuid.UUID:
    """The id of the task of chain link `step` in the run's current attempt."""
    return task_id_for(step_key(run.id, step, 0, run.attempt))


def attach(spec: tasks_pb2.TaskSpec, defn: WorkflowDef, step: StepDef, run: RunRecord) -> None:
    """Gives the task of `step` the chain links that follow it as continuations, and theirs,
    DEPTH levels deep."""
    if not defn.chained_after(step.name):
        return
    context = json.dumps({"input": run.input}, separators=(",", ":")).encode()
    if len(context) > MAX_INPUT_BYTES:
        return
    spec.then.context = context
    _attach(spec.then, defn, step, run, DEPTH)


def _attach(
    then: tasks_pb2.Continuations, defn: WorkflowDef, step: StepDef, run: RunRecord, depth: int
) -> None:
    if depth == 0:
        return
    for link in defn.chained_after(step.name):
        continuation = then.tasks.add(
            # In the trace of the task before, which is the run's.
            task=task_spec(link, None, run.id, 0, run.attempt, {}),
            payload_template=json.dumps(_template(link.input, step.name)).encode(),
        )
        _attach(continuation.task.then, defn, link, run, depth - 1)


def _link_ids(defn: WorkflowDef, run: RunRecord, but: Collection[str]) -> dict[uuid.UUID, str]:
    """The task ids the chain links of the run's current attempt have, wherever started,
    but those of the steps `but`."""
    return {_link_id(run, name): name for name in defn.chained_steps() if name not in but}


def started_early(
    defn: WorkflowDef, run: RunRecord, tasks: Sequence[StepTask], ends: Sequence[TaskEnd]
) -> list[StepTask]:
    """The chain links not yet recorded whose tasks `ends` end: an agent started them, and
    they ended before the orchestrator heard the task before them end. Recorded now (their
    tasks running, until their ends are recorded), they are not started again."""
    known = {task.task_id for task in tasks}
    unknown = [end for end in ends if end.task_id not in known and end.state != LOST]
    if not unknown:
        return []
    links = _link_ids(defn, run, {task.step for task in tasks})
    now = datetime.now(UTC)
    return [
        StepTask(
            links[end.task_id], end.task_id, Item(0, run.attempt, StepState.RUNNING), now, None
        )
        for end in unknown
        if end.task_id in links
    ]


def unwanted_ahead(
    defn: WorkflowDef,
    run: RunRecord,
    tasks: Sequence[StepTask],
    ends: Sequence[TaskEnd],
    starting: Collection[str] = (),
) -> list[uuid.UUID]:
    """The tasks an agent may have started as continuations of the tasks that succeeded
    among `ends`, but those of the steps recorded in `tasks` or `starting` now: those of a
    run that ended, or stopped starting steps (one failed), to cancel."""
    step_of = {task.task_id: task.step for task in tasks if task.task_id is not None}
    kept = {*step_of.values(), *starting}
    succeeded = [end for end in ends if end.state == StepState.SUCCEEDED]
    if any(end.task_id not in step_of for end in succeeded):
        step_of.update(_link_ids(defn, run, ()))
    return [
        _link_id(run, link.name)
        for end in succeeded
        if end.task_id in step_of
        for link in defn.chained_after(step_of[end.task_id])
        if link.name not in kept
    ]
