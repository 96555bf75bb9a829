"""What a run does next, decided from its definition and what its steps have done so far.
Pure: the caller loads the state under the run's row lock and carries the plan out."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from libs.common.errors import InvalidArgument
from libs.common.references import resolve
from services.orchestrator.definition import StepDef, WorkflowDef
from services.orchestrator.references import truthy


class StepState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


class RunState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


DONE = (StepState.SUCCEEDED, StepState.SKIPPED)
ENDED = (StepState.SUCCEEDED, StepState.SKIPPED, StepState.FAILED, StepState.CANCELLED)


@dataclass(frozen=True)
class Item:
    """One task of a step: item 0 of a plain step, 0..n-1 of a fan-out."""

    item: int
    attempt: int
    state: StepState
    output: Any = None
    error: str = ""


@dataclass(frozen=True)
class StepView:
    name: str
    state: StepState
    output: Any = None
    error: str = ""
    attempts: int = 0


def view_step(step: StepDef, items: list[Item], mark: tuple[StepState, str] | None) -> StepView:
    """A step's state: its mark when it ran no task, else what its tasks say."""
    attempts = max((i.attempt for i in items), default=0)
    if mark is not None:
        return StepView(step.name, mark[0], [] if mark[0] == StepState.SUCCEEDED else None, mark[1])
    if not items:
        return StepView(step.name, StepState.PENDING)
    items = sorted(items, key=lambda i: i.item)
    for bad in (StepState.FAILED, StepState.CANCELLED):
        failed = next((i for i in items if i.state == bad), None)
        if failed is not None:
            where = f"item {failed.item}: " if step.for_each is not None else ""
            return StepView(step.name, bad, None, where + failed.error, attempts)
    if all(i.state == StepState.SUCCEEDED for i in items):
        outputs = [i.output for i in items]
        output = outputs if step.for_each is not None else outputs[0]
        return StepView(step.name, StepState.SUCCEEDED, output, "", attempts)
    return StepView(step.name, StepState.RUNNING, None, "", attempts)


@dataclass(frozen=True)
class Start:
    """Tasks to submit for a step: one payload per item."""

    step: StepDef
    payloads: list[Any]


@dataclass
class Plan:
    start: list[Start] = field(default_factory=list)
    # Steps settled without a task: (name, SKIPPED | SUCCEEDED (empty fan-out) | FAILED, error)
    marks: list[tuple[str, StepState, str]] = field(default_factory=list)
    # The run's new state, when it ends now.
    ended: RunState | None = None
    output: Any = None
    error: str = ""
    # Running steps whose tasks are to be cancelled (the run failed).
    cancel: list[str] = field(default_factory=list)


def _context(run_input: Any, views: dict[str, StepView], error: str = "") -> dict[str, Any]:
    steps = {name: {"output": view.output} for name, view in views.items()}
    return {"input": run_input, "steps": steps, "error": error}


def _start_or_mark(step: StepDef, context: dict[str, Any], plan: Plan) -> StepState:
    try:
        if step.when is not None and not truthy(resolve(step.when, context)):
            plan.marks.append((step.name, StepState.SKIPPED, ""))
            return StepState.SKIPPED
        if step.for_each is None:
            plan.start.append(Start(step, [resolve(step.input, context)]))
            return StepState.RUNNING
        items = resolve(step.for_each, context)
        if not isinstance(items, list):
            raise InvalidArgument(f"for_each names a {type(items).__name__}, not a list")
        if not items:
            plan.marks.append((step.name, StepState.SUCCEEDED, ""))
            return StepState.SUCCEEDED
        payloads = [resolve(step.input, {**context, "item": item}) for item in items]
        plan.start.append(Start(step, payloads))
        return StepState.RUNNING
    except InvalidArgument as exc:
        plan.marks.append((step.name, StepState.FAILED, str(exc)))
        return StepState.FAILED


def plan_run(defn: WorkflowDef, run_input: Any, views: dict[str, StepView]) -> Plan:
    """Starts every step whose dependencies are done (skipping those whose `when` is falsy),
    and ends the run when nothing is left to do. A failed step fails the run: the other
    running steps are cancelled and `on_failure`, if any, runs first."""
    plan = Plan()
    views = dict(views)
    changed = True
    while changed:  # a skip or an empty fan-out can make more steps ready
        changed = False
        if any(v.state in (StepState.FAILED, StepState.CANCELLED) for v in views.values()):
            break
        context = _context(run_input, views)
        for name in defn.order():
            step = defn.step(name)
            if views[name].state != StepState.PENDING:
                continue
            if all(views[dep].state in DONE for dep in step.depends_on):
                state = _start_or_mark(step, context, plan)
                views[name] = StepView(name, state, [] if state == StepState.SUCCEEDED else None)
                changed = changed or state != StepState.RUNNING
                if changed:
                    break
    failed = [v for v in views.values() if v.state in (StepState.FAILED, StepState.CANCELLED)]
    main_failed = [v for v in failed if defn.on_failure is None or v.name != defn.on_failure.name]
    if main_failed:
        first = main_failed[0]
        error = f'step "{first.name}" {first.state.lower()}: {first.error}'.rstrip(": ")
        plan.cancel = [n for n, v in views.items() if v.state == StepState.RUNNING]
        handler = defn.on_failure
        if handler is None:
            plan.ended, plan.error = RunState.FAILED, error
            return plan
        handled = views.get(handler.name, StepView(handler.name, StepState.PENDING))
        if handled.state == StepState.PENDING:
            plan.cancel = [n for n in plan.cancel if n != handler.name]
            _start_or_mark(handler, _context(run_input, views, error), plan)
        elif handled.state in ENDED:
            plan.cancel = []
            plan.ended, plan.error = RunState.FAILED, error
        else:
            plan.cancel = [n for n in plan.cancel if n != handler.name]
        return plan
    main = [views[s.name] for s in defn.steps]
    if all(v.state in DONE for v in main):
        plan.ended = RunState.SUCCEEDED
        sinks = [s.name for s in defn.steps if not defn.dependents(s.name)]
        plan.output = {name: views[name].output for name in sinks}
    return plan
