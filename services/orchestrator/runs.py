"""Workflow runs: start, advance as their tasks end, cancel, retry. Every change of a run
happens under its row lock, and the tasks a step needs are submitted inside that lock with
idempotency keys (run, step, item, attempt): an orchestrator that dies anywhere leaves a
run another one (or its restart) advances from where it stood, and no step is dispatched
twice."""

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from libs.common.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.common.events import EventBus, make_events
from services.orchestrator.dag import (
    Item,
    RunState,
    Start,
    StepState,
    StepView,
    plan_run,
    view_step,
)
from services.orchestrator.definition import (
    WorkflowDef,
    dump_definition,
    load_definition,
    parse_definition,
)
from services.orchestrator.run_store import (
    Mark,
    RunRecord,
    RunStore,
    RunTx,
    StepTask,
    WorkflowRecord,
)
from services.orchestrator.task_client import TaskClient, TaskEnd, task_spec

log = structlog.get_logger(__name__)

# Child workflows nest at most this deep (a workflow cannot run itself, but A may run B
# which runs A).
MAX_DEPTH = 8
# Runs advanced at once by one orchestrator (each holds a database connection).
ADVANCING_AT_ONCE = 6


@dataclass(frozen=True)
class StepDetail:
    view: StepView
    task_ids: list[uuid.UUID]
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class RunDetail:
    run: RunRecord
    steps: list[StepDetail]


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not a UUID") from None


def _with_ends(tasks: Sequence[StepTask], ends: Sequence[TaskEnd]) -> list[StepTask]:
    """The steps' tasks once `ends` are recorded (as `RunTx.finish_tasks` records them)."""
    by_task = {end.task_id: end for end in ends}
    updated = []
    for task in tasks:
        end = by_task.get(task.task_id) if task.task_id else None
        if end is not None and task.item.state == StepState.RUNNING:
            state = StepState(end.state)
            output = end.output if state == StepState.SUCCEEDED else None
            task = replace(
                task, item=replace(task.item, state=state, output=output, error=end.error)
            )
        updated.append(task)
    return updated


def _views(
    defn: WorkflowDef, tasks: Sequence[StepTask], marks: Sequence[Mark]
) -> dict[str, StepView]:
    items: dict[str, list[Item]] = defaultdict(list)
    for task in tasks:
        items[task.step].append(task.item)
    marked = {m.step: (m.state, m.error) for m in marks}
    steps = [*defn.steps, *([defn.on_failure] if defn.on_failure else [])]
    return {s.name: view_step(s, items[s.name], marked.get(s.name)) for s in steps}


class Runs:
    def __init__(self, store: RunStore, tasks: TaskClient, events: EventBus) -> None:
        self._store = store
        self._tasks = tasks
        self._events = events
        self._definitions: dict[tuple[str, int], WorkflowDef] = {}

    # -- definitions ---------------------------------------------------------------------

    async def register(self, name: str, raw: bytes) -> WorkflowRecord:
        defn = parse_definition(
            name, raw, await self._tasks.task_types(), await self._store.workflow_names()
        )
        record = await self._store.add_workflow(name, dump_definition(defn))
        await self._events.publish(
            "workflow.registered", f"workflow/{name}", {"name": name, "version": record.version}
        )
        return record

    async def workflow(self, name: str, version: int = 0) -> WorkflowRecord:
        record = await self._store.workflow(name, version)
        if record is None:
            which = f" version {version}" if version else ""
            raise NotFound(f"no workflow {name!r}{which}")
        return record

    async def workflows(self, after: str, limit: int) -> list[WorkflowRecord]:
        return await self._store.latest_workflows(after, limit)

    async def _definition(self, name: str, version: int) -> WorkflowDef:
        key = (name, version)
        defn = self._definitions.get(key)
        if defn is None:
            record = await self.workflow(name, version)
            defn = self._definitions[key] = load_definition(name, record.definition)
        return defn

    # -- runs ----------------------------------------------------------------------------

    async def start(
        self, name: str, version: int, raw_input: bytes, idempotency_key: str
    ) -> tuple[RunRecord, bool]:
        record = await self.workflow(name, version)
        defn = await self._definition(record.name, record.version)
        try:
            run_input = json.loads(raw_input) if raw_input else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"the run's input is not JSON: {exc}") from None
        run, created = await self._store.insert_run(
            record, run_input, idempotency_key or None, defn.timeout_s
        )
        if created:
            await self._events.publish(
                "run.started", f"run/{run.id}", {"workflow": name, "version": record.version}
            )
            await self.advance(run.id)
        return await self._run(run.id), created

    async def _run(self, run_id: uuid.UUID) -> RunRecord:
        run = await self._store.run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    async def get(self, run_id: str) -> RunDetail:
        run = await self._run(_uuid(run_id, "run id"))
        defn = await self._definition(run.workflow, run.version)
        tasks, marks = await self._store.steps_of(run.id)
        views = _views(defn, tasks, marks)
        details = []
        for name, view in views.items():
            mine = [t for t in tasks if t.step == name]
            mark = next((m for m in marks if m.step == name), None)
            ends = [t.finished_at for t in mine if t.finished_at]
            details.append(
                StepDetail(
                    view,
                    [t.task_id for t in sorted(mine, key=lambda t: t.item.item) if t.task_id],
                    min((t.started_at for t in mine), default=mark.at if mark else None),
                    max(ends) if ends and len(ends) == len(mine) else (mark.at if mark else None),
                )
            )
        return RunDetail(run, details)

    async def find(
        self,
        workflow: str,
        state: RunState | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[RunRecord]:
        return await self._store.runs(workflow or None, state, after, limit)

    async def advance(self, run_id: uuid.UUID, ends: Sequence[TaskEnd] = ()) -> None:
        """Records `ends` on their steps, then does what the run's plan says."""
        events: list[tuple[str, str, Any]] = []
        cancelled: list[tuple[str, uuid.UUID]] = []
        children: list[uuid.UUID] = []
        async with self._store.locked(run_id) as tx:
            if tx is None:
                return
            run = tx.run
            if run.state != RunState.RUNNING:
                return
            defn = await self._definition(run.workflow, run.version)
            tasks, marks = await tx.steps(run_id)
            before = _views(defn, tasks, marks)
            await tx.finish_tasks(ends)
            views = _views(defn, _with_ends(tasks, ends), marks) if ends else before
            for name, view in views.items():
                if view.state != before[name].state and view.state != StepState.RUNNING:
                    events.append((f"step.{view.state.lower()}", name, {"error": view.error}))
            if run.deadline_at is not None and run.deadline_at <= datetime.now(UTC):
                running = [n for n, v in views.items() if v.state == StepState.RUNNING]
                cancelled += await tx.cancel_steps(run_id, running)
                events += [("step.cancelled", n, {}) for n in running]
                await tx.set_run(run_id, RunState.FAILED, error="the workflow timed out")
                events.append(("run.failed", "", {"error": "the workflow timed out"}))
                ended = True
            else:
                ended = await self._carry_out(tx, run, defn, views, events, cancelled, children)
        await self._publish(run_id, events)
        await self._stop_work(defn, cancelled)
        for child in children:
            await self.advance(child)
        if ended and run.parent_run_id is not None:
            await self._tell_parent(await self._run(run_id))

    async def _tell_parent(self, child: RunRecord) -> None:
        """A child run ended: its step in the parent run ends the same way."""
        assert child.parent_run_id is not None
        end = TaskEnd(child.id, child.state.value, child.output, child.error)
        await self.advance(child.parent_run_id, [end])

    async def _stop_work(self, defn: WorkflowDef, work: Sequence[tuple[str, uuid.UUID]]) -> None:
        """Cancels cancelled steps' tasks, and their child runs."""
        tasks = [ident for step, ident in work if not defn.step(step).workflow]
        if tasks:
            await self._tasks.cancel(tasks)
        for step, ident in work:
            if defn.step(step).workflow:
                with contextlib.suppress(FailedPrecondition):  # it ended meanwhile
                    await self.cancel(str(ident))

    async def _carry_out(
        self,
        tx: RunTx,
        run: RunRecord,
        defn: WorkflowDef,
        views: dict[str, StepView],
        events: list[tuple[str, str, Any]],
        cancelled: list[tuple[str, uuid.UUID]],
        children: list[uuid.UUID],
    ) -> bool:
        """Carries out the run's plan; answers whether the run ended."""
        plan = plan_run(defn, run.input, views)
        for name, state, error in plan.marks:
            await tx.mark(run.id, name, state, error)
            events.append((f"step.{state.lower()}", name, {"error": error}))
        if plan.cancel:
            cancelled += await tx.cancel_steps(run.id, plan.cancel)
            events += [("step.cancelled", name, {}) for name in plan.cancel]
        tasks = [start for start in plan.start if not start.step.workflow]
        if tasks:
            specs = [
                task_spec(start.step, payload, run.id, item, run.attempt)
                for start in tasks
                for item, payload in enumerate(start.payloads)
            ]
            task_ids = await self._tasks.submit(specs)
            offset = 0
            for start in tasks:
                mine = task_ids[offset : offset + len(start.payloads)]
                offset += len(start.payloads)
                await tx.add_tasks(run.id, start.step.name, run.attempt, mine)
                events.append(("step.started", start.step.name, {"tasks": len(mine)}))
        for start in plan.start:
            if start.step.workflow:
                await self._start_children(tx, run, start, events, children)
        if plan.ended is not None:
            await tx.set_run(run.id, plan.ended, plan.output, plan.error)
            events.append((f"run.{plan.ended.lower()}", "", {"error": plan.error}))
            return True
        await tx.touch(run.id)
        return False

    async def _start_children(
        self,
        tx: RunTx,
        run: RunRecord,
        start: Start,
        events: list[tuple[str, str, Any]],
        children: list[uuid.UUID],
    ) -> None:
        """A run of the step's workflow per item, keyed like tasks so a retried plan finds
        the same runs; they start once the parent's transaction has committed."""
        step = start.step
        assert step.workflow is not None
        error = ""
        if run.depth + 1 > MAX_DEPTH:
            error = f"child workflows nest deeper than {MAX_DEPTH}"
        else:
            try:
                record = await self.workflow(step.workflow)
            except NotFound as exc:
                error = str(exc)
        if error:
            await tx.mark(run.id, step.name, StepState.FAILED, error)
            events.append(("step.failed", step.name, {"error": error}))
            return
        child_defn = await self._definition(record.name, record.version)
        ids = []
        for item, payload in enumerate(start.payloads):
            key = f"run:{run.id}:{step.name}:{item}:{run.attempt}"
            parent = (run.id, step.name, run.depth + 1)
            child, created = await tx.insert_child(
                record, payload, key, child_defn.timeout_s, parent
            )
            ids.append(child.id)
            if created:
                children.append(child.id)
        await tx.add_tasks(run.id, step.name, run.attempt, ids)
        events.append(("step.started", step.name, {"runs": len(ids)}))

    async def _publish(self, run_id: uuid.UUID, events: list[tuple[str, str, Any]]) -> None:
        if not events:
            return
        # One subject for the run and its steps: a watcher of the run sees them all.
        items = [
            (
                type_,
                f"run/{run_id}",
                {"run": str(run_id), **({"step": step} if step else {}), **data},
            )
            for type_, step, data in events
        ]
        await self._events.publish_events(make_events(items, self._events.source))

    async def tasks_ended(self, ends: Sequence[tuple[uuid.UUID, TaskEnd]]) -> None:
        """Task ends that the event stream brought, by run."""
        by_run: dict[uuid.UUID, list[TaskEnd]] = defaultdict(list)
        for run_id, end in ends:
            by_run[run_id].append(end)
        # Runs advance side by side (each under its own lock), a few at a time: a run's
        # advance mostly waits on Postgres and TaskService.
        gate = asyncio.Semaphore(ADVANCING_AT_ONCE)

        async def one(run_id: uuid.UUID, run_ends: list[TaskEnd]) -> None:
            async with gate:
                await self.advance(run_id, run_ends)

        await asyncio.gather(*(one(run_id, run_ends) for run_id, run_ends in by_run.items()))

    async def cancel(self, run_id: str) -> RunRecord:
        rid = _uuid(run_id, "run id")
        async with self._store.locked(rid) as tx:
            if tx is None:
                raise NotFound(f"no run {run_id}")
            run = tx.run
            if run.state != RunState.RUNNING:
                raise FailedPrecondition(f"run {run_id} is {run.state.value}, not RUNNING")
            defn = await self._definition(run.workflow, run.version)
            running = [
                n
                for n, v in _views(defn, *(await tx.steps(rid))).items()
                if v.state == StepState.RUNNING
            ]
            cancelled = await tx.cancel_steps(rid, running)
            await tx.set_run(rid, RunState.CANCELLED, error="cancelled")
        await self._publish(
            rid, [*(("step.cancelled", n, {}) for n in running), ("run.cancelled", "", {})]
        )
        await self._stop_work(defn, cancelled)
        ended = await self._run(rid)
        if ended.parent_run_id is not None:
            await self._tell_parent(ended)
        return ended

    async def retry(self, run_id: str) -> RunRecord:
        rid = _uuid(run_id, "run id")
        async with self._store.locked(rid) as tx:
            if tx is None:
                raise NotFound(f"no run {run_id}")
            run = tx.run
            if run.state not in (RunState.FAILED, RunState.CANCELLED):
                raise FailedPrecondition(
                    f"run {run_id} is {run.state.value}: only a failed or cancelled run is retried"
                )
            defn = await self._definition(run.workflow, run.version)
            again = await tx.retry(rid, defn.on_failure.name if defn.on_failure else None)
        await self._publish(rid, [("run.retried", "", {"steps": again})])
        await self.advance(rid)
        return await self._run(rid)

    async def reconcile(self, stale_s: float, limit: int = 100) -> int:
        """Runs nobody advanced for `stale_s` (a task's end event lost with a task agent) or
        past their deadline: asks TaskService how their running tasks ended."""
        advanced = 0
        for run_id in await self._store.stale_runs(stale_s, limit):
            run = await self._run(run_id)
            defn = await self._definition(run.workflow, run.version)
            tasks, _ = await self._store.steps_of(run_id)
            running = [t for t in tasks if t.item.state == StepState.RUNNING and t.task_id]
            ends = await self._tasks.ends(
                [t.task_id for t in running if t.task_id and not defn.step(t.step).workflow]
            )
            for task in running:
                if task.task_id is None or not defn.step(task.step).workflow:
                    continue
                child = await self._store.run(task.task_id)
                if child is not None and child.state != RunState.RUNNING:
                    ends.append(TaskEnd(child.id, child.state.value, child.output, child.error))
            await self.advance(run_id, ends)
            advanced += 1
        return advanced
