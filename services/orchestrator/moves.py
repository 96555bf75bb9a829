"""One run's advance, worked out before it is written: its steps' views before and after
the task ends it records, the events of what changed, and the plan of what to do next."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agentry.tasks.v1 import tasks_pb2
from services.orchestrator.dag import (
    Item,
    Plan,
    RunState,
    StepState,
    StepView,
    plan_run,
    view_step,
)
from services.orchestrator.definition import WorkflowDef
from services.orchestrator.run_store import Mark, RunRecord, StepTask
from services.orchestrator.task_client import LOST, TaskEnd

# A run's event before it is published: (type, step or "", data).
Event = tuple[str, str, Any]


def _with_ends(tasks: Sequence[StepTask], ends: Sequence[TaskEnd]) -> list[StepTask]:
    """The steps' tasks once `ends` are recorded (as `RunTx.finish_tasks` records them).
    A step with a LOST task is left without tasks: the plan starts it again, with the
    same keys, and so the same tasks where some of them did reach TaskService."""
    by_task = {end.task_id: end for end in ends}
    lost_ids = {end.task_id for end in ends if end.state == LOST}
    lost = {task.step for task in tasks if task.task_id in lost_ids}
    updated = []
    for task in tasks:
        if task.step in lost:
            continue
        end = by_task.get(task.task_id) if task.task_id else None
        if end is not None and task.item.state == StepState.RUNNING:
            state = StepState(end.state)
            output = end.output if state == StepState.SUCCEEDED else None
            task = replace(
                task, item=replace(task.item, state=state, output=output, error=end.error)
            )
        updated.append(task)
    return updated


def changes_steps(tasks: Sequence[StepTask], ends: Sequence[TaskEnd]) -> bool:
    """Whether recording `ends` changes a step: one is the end of a task still running."""
    running = {task.task_id for task in tasks if task.item.state == StepState.RUNNING}
    return any(end.task_id in running for end in ends)


def views_of(
    defn: WorkflowDef, tasks: Sequence[StepTask], marks: Sequence[Mark]
) -> dict[str, StepView]:
    items: dict[str, list[Item]] = defaultdict(list)
    for task in tasks:
        items[task.step].append(task.item)
    marked = {m.step: (m.state, m.error) for m in marks}
    steps = [*defn.steps, *([defn.on_failure] if defn.on_failure else [])]
    return {s.name: view_step(s, items[s.name], marked.get(s.name)) for s in steps}


@dataclass
class Move:
    """One run's advance: worked out from its plan, then written with other runs'."""

    run: RunRecord
    defn: WorkflowDef
    plan: Plan
    events: list[Event]
    cancelled: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    children: list[uuid.UUID] = field(default_factory=list)
    # The tasks of the steps it starts, submitted once the move is committed, and their ids.
    specs: list[tasks_pb2.TaskSpec] = field(default_factory=list)
    task_ids: list[uuid.UUID] = field(default_factory=list)
    # The tasks task agents started as continuations of the tasks it records ends of.
    continued: frozenset[uuid.UUID] = frozenset()

    @property
    def ended(self) -> bool:
        return self.plan.ended is not None


def plan_move(
    run: RunRecord,
    defn: WorkflowDef,
    tasks: Sequence[StepTask],
    marks: Sequence[Mark],
    ends: Sequence[TaskEnd],
) -> Move:
    """What advancing `run` does once `ends` are recorded (a run past its deadline fails,
    its running steps cancelled)."""
    before = views_of(defn, tasks, marks)
    views = views_of(defn, _with_ends(tasks, ends), marks) if ends else before
    events: list[Event] = [
        (f"step.{view.state.lower()}", name, {"error": view.error})
        for name, view in views.items()
        if view.state != before[name].state
        and view.state not in (StepState.RUNNING, StepState.PENDING)
    ]
    if run.deadline_at is not None and run.deadline_at <= datetime.now(UTC):
        running = [name for name, view in views.items() if view.state == StepState.RUNNING]
        plan = Plan(ended=RunState.FAILED, error="the workflow timed out", cancel=running)
    else:
        plan = plan_run(defn, run.input, views)
    continued = frozenset(task_id for end in ends for task_id in end.continued)
    return Move(run, defn, plan, events, continued=continued)
