"""Workflow runs: start, advance as their tasks end, cancel, retry. Every change of a run
happens under its row lock. The tasks a step needs are recorded under that lock with
idempotency keys (run, step, item, attempt), which give them their ids, and submitted once
it is released: an orchestrator that dies anywhere leaves a run another one (or its
restart) advances from where it stood, submitting again what never reached TaskService, and
no step is dispatched twice. Runs move in batches: the task ends of one event read, or the
StartRun calls that arrive together, go in one transaction holding all their locks."""

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog

from agentry.tasks.v1 import tasks_pb2
from libs.common import tracing
from libs.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from libs.common.events import EventBus, make_events
from libs.common.task_ids import task_id_for
from services.orchestrator import metrics
from services.orchestrator.coalescer import Coalescer
from services.orchestrator.continuations import attach, started_early, unwanted_ahead
from services.orchestrator.dag import (
    RunState,
    Start,
    StepState,
    StepView,
)
from services.orchestrator.definition import (
    WorkflowDef,
    dump_definition,
    load_definition,
    parse_definition,
)
from services.orchestrator.moves import Event, Move, changes_steps, plan_move, views_of
from services.orchestrator.run_store import (
    NewRun,
    RunEnd,
    RunRecord,
    RunStore,
    RunTx,
    StartedStep,
)
from services.orchestrator.task_client import (
    LOST,
    CancelHold,
    TaskClient,
    TaskEnd,
    step_key,
    task_spec,
)
from services.orchestrator.workflow_store import WorkflowRecord, WorkflowStore

log = structlog.get_logger(__name__)

# Child workflows nest at most this deep (a workflow cannot run itself, but A may run B
# which runs A).
MAX_DEPTH = 8
# Runs advanced in one transaction, at most.
RUNS_PER_ADVANCE = 200
# Batches of started runs whose first tasks are being submitted, at most.
FOLLOW_UPS = 2
# Pauses between tries of a SubmitTasks call TaskService could not answer.
SUBMIT_RETRY_S = (0.2, 1.0, 3.0)


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


@dataclass(frozen=True)
class _NewRun:
    """A StartRun call's run, before its workflow is looked up."""

    name: str
    version: int
    input: Any
    idempotency_key: str | None
    trace: dict[str, str]


class Runs:
    def __init__(
        self,
        store: RunStore,
        workflows: WorkflowStore,
        tasks: TaskClient,
        events: EventBus,
        continuations: bool = True,
    ) -> None:
        self._store = store
        self._continuations = continuations
        self._workflows = workflows
        self._tasks = tasks
        self._events = events
        self._definitions: dict[tuple[str, int], WorkflowDef] = {}
        self._starts = Coalescer(self._start_many)
        self._following = asyncio.Semaphore(FOLLOW_UPS)
        self._follow_ups: set[asyncio.Task[None]] = set()

    # -- definitions ---------------------------------------------------------------------

    async def register(self, name: str, raw: bytes) -> WorkflowRecord:
        defn = parse_definition(
            name, raw, await self._tasks.task_types(), await self._workflows.workflow_names()
        )
        record = await self._workflows.add_workflow(name, dump_definition(defn))
        await self._events.publish(
            "workflow.registered", f"workflow/{name}", {"name": name, "version": record.version}
        )
        return record

    async def workflow(self, name: str, version: int = 0) -> WorkflowRecord:
        record = await self._workflows.workflow(name, version)
        if record is None:
            which = f" version {version}" if version else ""
            raise NotFound(f"no workflow {name!r}{which}")
        return record

    async def workflows(self, after: str, limit: int) -> list[WorkflowRecord]:
        return await self._workflows.latest_workflows(after, limit)

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
        try:
            run_input = json.loads(raw_input) if raw_input else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"the run's input is not JSON: {exc}") from None
        # The caller's trace, taken here: its start may go in a batch started by another call.
        new = _NewRun(name, version, run_input, idempotency_key or None, tracing.carrier())
        return await self._starts(new)

    async def _start_many(self, news: list[_NewRun]) -> list[tuple[RunRecord, bool] | Exception]:
        """Runs started together (StartRun calls that arrived while the previous batches
        were being started): their workflows read in one query, then one transaction
        inserts the runs and records their first moves. The callers are answered once it
        commits; the first tasks are submitted right after, with at most FOLLOW_UPS
        batches under way (past that, a caller waits: backpressure). Committed first, a
        run is found by the end of a task that ran at once; an orchestrator that stops
        before the submission leaves it to the reconciler, as for any advance."""
        records = await self._workflows.workflows_asked({(new.name, new.version) for new in news})
        rows = []
        for new in news:
            record = records.get((new.name, new.version))
            if record is not None:
                defn = await self._definition(record.name, record.version)
                rows.append(
                    NewRun(record, new.input, new.idempotency_key, defn.timeout_s, new.trace)
                )
        moves: list[Move] = []
        with self._tasks.hold() as hold:
            async with self._store.starting(rows) as (tx, inserted):
                for run in tx.runs:
                    defn = await self._definition(run.workflow, run.version)
                    move = plan_move(run, defn, [], [], ())
                    started = {"workflow": run.workflow, "version": run.version}
                    move.events.insert(0, ("run.started", "", started))
                    moves.append(move)
                await self._carry_out(tx, moves, hold)
        for move in moves:
            metrics.RUNS_STARTED.labels(move.run.workflow).inc()
        await self._following.acquire()
        follow_up = asyncio.create_task(self._follow_up(moves, hold))
        self._follow_ups.add(follow_up)
        follow_up.add_done_callback(self._followed_up)
        # A run its first move ended (every step skipped) is answered as it ended.
        ended = {move.run.id: move.plan for move in moves if move.plan.ended is not None}
        answers: list[tuple[RunRecord, bool] | Exception] = []
        runs = iter(inserted)
        for new in news:
            if (new.name, new.version) not in records:
                which = f" version {new.version}" if new.version else ""
                answers.append(NotFound(f"no workflow {new.name!r}{which}"))
                continue
            run, created = next(runs)
            plan = ended.get(run.id)
            if plan is not None and plan.ended is not None:
                run = replace(run, state=plan.ended, output=plan.output, error=plan.error)
            answers.append((run, created))
        return answers

    def _followed_up(self, follow_up: asyncio.Task[None]) -> None:
        self._follow_ups.discard(follow_up)
        self._following.release()
        if not follow_up.cancelled() and follow_up.exception() is not None:
            log.error(
                "started runs not followed up; the reconciler will",
                exc_info=follow_up.exception(),
            )

    async def settle(self) -> None:
        """Waits for the started runs' first submissions under way."""
        await asyncio.gather(*self._follow_ups, return_exceptions=True)

    async def _run(self, run_id: uuid.UUID) -> RunRecord:
        run = await self._store.run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    async def get(self, run_id: str) -> RunDetail:
        run = await self._run(_uuid(run_id, "run id"))
        defn = await self._definition(run.workflow, run.version)
        tasks, marks = await self._store.steps_of(run.id)
        views = views_of(defn, tasks, marks)
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
        await self.advance_many({run_id: ends})

    async def advance_many(self, ends_by_run: Mapping[uuid.UUID, Sequence[TaskEnd]]) -> list[Move]:
        """Advances runs together, in one transaction that holds their locks: one read of
        their steps, one write of the ends, one write of the tasks their plans start, then
        the commit, one SubmitTasks for those tasks, and one publish. A busy orchestrator's
        cost per step shrinks with the number of runs in a batch.

        The tasks are recorded before they are submitted: their ids derive from their
        idempotency keys (run, step, item, attempt), so the locks are not held across the
        call, and a run's next task end never waits for its previous advance's call. An
        orchestrator that stops between the commit and the call leaves tasks TaskService
        does not know; the reconciler finds them lost and submits them again.

        Chain links a task agent started itself are recorded as they are heard of (see
        continuations.py), and what it started for runs that ended is cancelled."""
        moves: list[Move] = []
        unwanted: list[uuid.UUID] = []
        with self._tasks.hold() as hold:
            async with self._store.locked(list(ends_by_run)) as tx:
                early: list[StartedStep] = []
                for run in tx.runs:
                    defn = await self._definition(run.workflow, run.version)
                    tasks, marks = tx.steps[run.id]
                    ends = ends_by_run[run.id]
                    if run.state != RunState.RUNNING:
                        unwanted += unwanted_ahead(defn, run, tasks, ends)
                        continue
                    ahead = started_early(defn, run, tasks, ends)
                    early += [
                        StartedStep(run.id, t.step, run.attempt, [i])
                        for t in ahead
                        if (i := t.task_id)
                    ]
                    tasks = [*tasks, *ahead]
                    # An end heard twice (an event delivered again, the reconciler's
                    # reading) changes nothing.
                    if ends and not changes_steps(tasks, ends):
                        continue
                    move = plan_move(run, defn, tasks, marks, ends)
                    move.events[:0] = [("step.started", t.step, {"tasks": 1}) for t in ahead]
                    moves.append(move)
                    starting = {start.step.name for start in move.plan.start}
                    unwanted += unwanted_ahead(defn, run, tasks, ends, starting)
                await tx.add_tasks(early)
                await tx.finish_tasks(
                    [end for m in moves for end in ends_by_run[m.run.id] if end.state != LOST]
                )
                await self._carry_out(tx, moves, hold)
        await self._follow_up(moves, hold)
        if unwanted:
            await self._tasks.cancel(unwanted)
        return moves

    async def _follow_up(self, moves: Sequence[Move], hold: CancelHold) -> None:
        """What follows the commit of moves: their events published and their tasks
        submitted (then cancels of those let through), the cancelled work stopped, child
        runs advanced, parents told of runs that ended; last, the tasks TaskService refused
        fail. The events are sent before the tasks, and the two calls then wait together:
        a run's next events come from those tasks, so they follow (by many round trips),
        and the publication adds no wait to a step's start."""
        for move in moves:
            if move.plan.ended is not None:
                metrics.RUNS_FINISHED.labels(move.run.workflow, move.plan.ended.value).inc()
        try:
            _, refused = await asyncio.gather(
                self._publish([(move.run.id, move.events) for move in moves]),
                self._submit(moves),
            )
        finally:
            hold.release()
        for move in moves:
            await self._stop_work(move.defn, move.cancelled)
            for child in move.children:
                await self.advance(child)
            if move.ended and move.run.parent_run_id is not None:
                await self._tell_parent(await self._run(move.run.id))
        for move, exc in refused:
            await self._fail_refused(move, exc)

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

    async def _carry_out(self, tx: RunTx, moves: Sequence[Move], hold: CancelHold) -> None:
        """Writes what the runs' plans say, in the transaction holding their locks; the
        tasks it records are held from cancels until they are submitted."""
        for move in moves:
            run, plan = move.run, move.plan
            for name, state, error in plan.marks:
                await tx.mark(run.id, name, state, error)
                move.events.append((f"step.{state.lower()}", name, {"error": error}))
            if plan.cancel:
                move.cancelled += await tx.cancel_steps(run.id, plan.cancel)
                move.events += [("step.cancelled", name, {}) for name in plan.cancel]
        await self._record_tasks(tx, moves)
        hold.take([task_id for move in moves for task_id in move.task_ids])
        ended = []
        for move in moves:
            for start in move.plan.start:
                if start.step.workflow:
                    await self._start_children(tx, move, start)
            plan = move.plan
            if plan.ended is not None:
                ended.append(RunEnd(move.run.id, plan.ended, plan.output, plan.error))
                move.events.append((f"run.{plan.ended.lower()}", "", {"error": plan.error}))
        await tx.end_runs(ended)
        await tx.touch([move.run.id for move in moves if not move.ended])

    async def _record_tasks(self, tx: RunTx, moves: Sequence[Move]) -> None:
        """The tasks of every step the plans start, recorded under the runs' locks with the
        ids their keys give them; each move keeps its specs for the call after the commit."""
        started = []
        for move in moves:
            run = move.run
            for start in move.plan.start:
                if start.step.workflow:
                    continue
                specs = [
                    task_spec(start.step, payload, run.id, item, run.attempt, run.trace_context)
                    for item, payload in enumerate(start.payloads)
                ]
                ids = [task_id_for(spec.idempotency_key) for spec in specs]
                # A task an agent started as a continuation is not submitted again.
                submitted = [s for s, i in zip(specs, ids, strict=True) if i not in move.continued]
                if self._continuations and start.step.for_each is None and submitted:
                    attach(submitted[0], move.defn, start.step, run)
                move.specs += submitted
                move.task_ids += ids
                started.append(StartedStep(run.id, start.step.name, run.attempt, ids))
                move.events.append(("step.started", start.step.name, {"tasks": len(ids)}))
        await tx.add_tasks(started)

    async def _submit(self, moves: Sequence[Move]) -> list[tuple[Move, InvalidArgument]]:
        """The committed moves' tasks, in one SubmitTasks call. TaskService takes a batch
        whole or not at all: when it refuses one, each run's tasks are submitted on their
        own. Answers the moves whose tasks it refuses, and why."""
        submitting = [move for move in moves if move.specs]
        if not submitting:
            return []
        try:
            await self._submit_specs([spec for move in submitting for spec in move.specs])
            return []
        except InvalidArgument as exc:
            if len(submitting) == 1:
                return [(submitting[0], exc)]
        refused = []
        for move in submitting:
            try:
                await self._submit_specs(move.specs)
            except InvalidArgument as exc:
                refused.append((move, exc))
        return refused

    async def _submit_specs(self, specs: Sequence[tasks_pb2.TaskSpec]) -> None:
        """Submits, trying again a few times while TaskService is unavailable; past those
        the tasks are lost until the reconciler submits them again."""
        for delay_s in (*SUBMIT_RETRY_S, None):
            try:
                await self._tasks.submit(specs)
                return
            except (Unavailable, DeadlineExceeded) as exc:
                if delay_s is None:
                    metrics.TASKS_UNSUBMITTED.inc(len(specs))
                    log.warning("tasks not submitted; the reconciler will", error=str(exc))
                    return
                await asyncio.sleep(delay_s)

    async def _fail_refused(self, move: Move, exc: InvalidArgument) -> None:
        """TaskService refused a move's tasks: they fail, with the reason on their step,
        and the run goes on from there (on_failure, or it fails)."""
        error = f"TaskService refused its task: {exc}"
        await self.advance(move.run.id, [TaskEnd(i, "FAILED", error=error) for i in move.task_ids])

    async def _start_children(self, tx: RunTx, move: Move, start: Start) -> None:
        """A run of the step's workflow per item, keyed like tasks so a retried plan finds
        the same runs; they start once the parent's transaction has committed."""
        run, step = move.run, start.step
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
            move.events.append(("step.failed", step.name, {"error": error}))
            return
        child_defn = await self._definition(record.name, record.version)
        ids = []
        for item, payload in enumerate(start.payloads):
            key = step_key(run.id, step.name, item, run.attempt)
            parent = (run.id, step.name, run.depth + 1)
            child, created = await tx.insert_run(
                record, payload, key, child_defn.timeout_s, run.trace_context, parent
            )
            ids.append(child.id)
            if created:
                metrics.RUNS_STARTED.labels(record.name).inc()
                move.children.append(child.id)
        await tx.add_tasks([StartedStep(run.id, step.name, run.attempt, ids)])
        move.events.append(("step.started", step.name, {"runs": len(ids)}))

    async def _publish(self, by_run: Sequence[tuple[uuid.UUID, list[Event]]]) -> None:
        # One subject for the run and its steps: a watcher of the run sees them all.
        items = [
            (
                type_,
                f"run/{run_id}",
                {"run": str(run_id), **({"step": step} if step else {}), **data},
            )
            for run_id, events in by_run
            for type_, step, data in events
        ]
        if items:
            await self._events.publish_events(make_events(items, self._events.source))

    async def tasks_ended(self, ends: Sequence[tuple[uuid.UUID, TaskEnd]]) -> None:
        """Task ends that the event stream brought: their runs advance together, a batch
        of runs per transaction."""
        by_run: dict[uuid.UUID, list[TaskEnd]] = defaultdict(list)
        for run_id, end in ends:
            by_run[run_id].append(end)
        run_ids = list(by_run)
        for start in range(0, len(run_ids), RUNS_PER_ADVANCE):
            await self.advance_many(
                {r: by_run[r] for r in run_ids[start : start + RUNS_PER_ADVANCE]}
            )

    async def cancel(self, run_id: str) -> RunRecord:
        rid = _uuid(run_id, "run id")
        async with self._store.locked([rid]) as tx:
            if not tx.runs:
                raise NotFound(f"no run {run_id}")
            [run] = tx.runs
            if run.state != RunState.RUNNING:
                raise FailedPrecondition(f"run {run_id} is {run.state.value}, not RUNNING")
            defn = await self._definition(run.workflow, run.version)
            running = [
                n for n, v in views_of(defn, *tx.steps[rid]).items() if v.state == StepState.RUNNING
            ]
            cancelled = await tx.cancel_steps(rid, running)
            await tx.end_runs([RunEnd(rid, RunState.CANCELLED, error="cancelled")])
        metrics.RUNS_FINISHED.labels(run.workflow, RunState.CANCELLED.value).inc()
        events: list[Event] = [*(("step.cancelled", n, {}) for n in running)]
        await self._publish([(rid, [*events, ("run.cancelled", "", {})])])
        await self._stop_work(defn, cancelled)
        ended = await self._run(rid)
        if ended.parent_run_id is not None:
            await self._tell_parent(ended)
        return ended

    async def retry(self, run_id: str) -> RunRecord:
        rid = _uuid(run_id, "run id")
        async with self._store.locked([rid]) as tx:
            if not tx.runs:
                raise NotFound(f"no run {run_id}")
            [run] = tx.runs
            if run.state not in (RunState.FAILED, RunState.CANCELLED):
                raise FailedPrecondition(
                    f"run {run_id} is {run.state.value}: only a failed or cancelled run is retried"
                )
            defn = await self._definition(run.workflow, run.version)
            again = await tx.retry(rid, defn.on_failure.name if defn.on_failure else None)
        await self._publish([(rid, [("run.retried", "", {"steps": again})])])
        await self.advance(rid)
        return await self._run(rid)

    async def reconcile(self, stale_s: float, limit: int = 100) -> int:
        """Runs nobody advanced for `stale_s` (a task's end event lost with a task agent, or
        an orchestrator stopped before it submitted a step's tasks) or past their deadline:
        asks TaskService how their running tasks ended, and submits again those it does not
        know."""
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
