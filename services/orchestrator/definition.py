"""Workflow definitions: their shape, the rules a definition must pass before the orchestrator
accepts it, the `{"$ref": ...}` templates that carry values between steps, and the small cron
dialect that schedules runs.

A definition is data, never code: a reference names a value and is never evaluated.
"""

import dataclasses
import difflib
import heapq
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from libs.common.errors import InvalidArgument
from libs.common.references import references, show
from services.orchestrator import cron
from services.orchestrator.references import check_references

MAX_DEFINITION_BYTES = 256 * 1024
MAX_STEPS = 500
MAX_STEP_TIMEOUT_S = 86_400.0
MAX_WORKFLOW_TIMEOUT_S = 30 * 86_400.0
MAX_ATTEMPTS = 100
# YAML aliases can expand a small document into a huge (or self-containing) one, so the parsed
# value is bounded too, not only its bytes.
_MAX_NODES = 200_000
_MAX_DEPTH = 64

_WORKFLOW_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_STEP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_TYPE = re.compile(r"[a-z]+(\.[a-z_]+)+")
_WORKFLOW_KEYS = ("name", "timeout_s", "steps", "on_failure", "triggers", "schedule")
_STEP_KEYS = (
    "name", "type", "workflow", "input", "depends_on", "for_each", "when", "retry", "timeout_s",
    "fallback", "queue",
)  # fmt: skip
# A step that runs a child workflow takes none of a task's own settings.
_TASK_ONLY_KEYS = ("retry", "timeout_s", "fallback", "queue")
_RETRY_KEYS = ("max_attempts", "initial_backoff_s", "max_backoff_s")


@dataclass(frozen=True)
class RetrySpec:
    max_attempts: int = 3
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class StepDef:
    name: str
    type: str
    input: Any = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    for_each: Any | None = None
    when: Any | None = None
    retry: RetrySpec | None = None
    timeout_s: float | None = None
    fallback: str | None = None
    queue: str | None = None
    # Set (and `type` empty) for a step that runs a run of this workflow, its input the
    # step's input, its output the child run's output.
    workflow: str | None = None


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    steps: tuple[StepDef, ...]
    timeout_s: float | None = None
    on_failure: StepDef | None = None
    triggers: tuple[str, ...] = ()
    schedule: str | None = None
    _by_name: dict[str, StepDef] = field(init=False, repr=False, compare=False)
    _chained: dict[str, tuple[StepDef, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.steps}
        if self.on_failure is not None:
            by_name.setdefault(self.on_failure.name, self.on_failure)
        object.__setattr__(self, "_by_name", by_name)
        chained: dict[str, list[StepDef]] = {}
        for step in self.steps:
            if _chained(step, by_name):
                chained.setdefault(step.depends_on[0], []).append(step)
        object.__setattr__(self, "_chained", {k: tuple(v) for k, v in chained.items()})

    def chained_after(self, name: str) -> tuple[StepDef, ...]:
        """The steps that can start the moment step `name`'s task succeeds, from its result
        and the run's input alone (see `_chained`)."""
        return self._chained.get(name, ())

    def chained_steps(self) -> list[str]:
        return [step.name for steps in self._chained.values() for step in steps]

    def step(self, name: str) -> StepDef:
        """The step called `name`, the on_failure step included."""
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidArgument(f'workflow "{self.name}" has no step "{name}"') from None

    def roots(self) -> list[str]:
        return [s.name for s in self.steps if not s.depends_on]

    def dependents(self, name: str) -> list[str]:
        return [s.name for s in self.steps if name in s.depends_on]

    def ancestors(self, name: str) -> set[str]:
        """Every step `name` depends on, directly or through other steps."""
        seen: set[str] = set()
        todo = list(self.step(name).depends_on)
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.step(dep).depends_on)
        return seen

    def order(self) -> list[str]:
        """A topological order that keeps definition order wherever the dependencies allow."""
        position = {s.name: i for i, s in enumerate(self.steps)}
        waiting = {s.name: len(set(s.depends_on)) for s in self.steps}
        ready = [i for i, s in enumerate(self.steps) if not s.depends_on]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = self.steps[heapq.heappop(ready)].name
            order.append(name)
            for dependent in self.dependents(name):
                waiting[dependent] -= 1
                if not waiting[dependent]:
                    heapq.heappush(ready, position[dependent])
        return order


def _chained(step: StepDef, by_name: Mapping[str, StepDef]) -> bool:
    """Whether `step` follows its one dependency as a chain link: that dependency runs a
    single task (no fan-out, no child run), and `step` runs a single task always (no
    `when`), its input read from the run's input and that task's result only."""
    if len(step.depends_on) != 1 or step.for_each is not None or step.when is not None:
        return False
    before = by_name[step.depends_on[0]]
    if step.workflow or before.workflow or before.for_each is not None:
        return False
    output = f"steps.{before.name}.output"
    return all(
        ref.startswith("input.") or ref == output or ref.startswith(output + ".")
        for ref in references(step.input)
    )


def parse_definition(
    name: str, raw: bytes, known_types: set[str] | None, known_workflows: set[str] | None = None
) -> WorkflowDef:
    """A JSON or YAML definition, registered as `name`, checked and normalized. With
    `known_types`, every step's type and fallback must be served by some agent; with
    `known_workflows`, every child workflow must be registered."""
    if len(raw) > MAX_DEFINITION_BYTES:
        raise InvalidArgument(
            f"a workflow definition is limited to {MAX_DEFINITION_BYTES // 1024} KiB; "
            f"this one is {len(raw)} bytes"
        )
    return _build(name, _load_document(raw), known_types, known_workflows)


def load_definition(name: str, raw: bytes) -> WorkflowDef:
    """A definition as `dump_definition` stored it; agents may have come and gone since, so
    types are not checked again."""
    return _build(name, _load_document(raw), None, None)


def dump_definition(defn: WorkflowDef) -> bytes:
    """Canonical JSON of a definition: sorted keys, defaults filled in, absent fields left out."""
    doc: dict[str, Any] = {"name": defn.name, "steps": [_step_doc(s) for s in defn.steps]}
    if defn.timeout_s is not None:
        doc["timeout_s"] = defn.timeout_s
    if defn.on_failure is not None:
        doc["on_failure"] = _step_doc(defn.on_failure)
    if defn.triggers:
        doc["triggers"] = list(defn.triggers)
    if defn.schedule is not None:
        doc["schedule"] = defn.schedule
    # ASCII keeps lone surrogates and control characters as escapes, so it reads back exactly.
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def _step_doc(step: StepDef) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": step.name, "input": step.input}
    if step.workflow is not None:
        doc["workflow"] = step.workflow
    else:
        doc["type"] = step.type
    if step.depends_on:
        doc["depends_on"] = list(step.depends_on)
    if step.retry is not None:
        doc["retry"] = dataclasses.asdict(step.retry)
    for key in ("for_each", "when", "timeout_s", "fallback", "queue"):
        if getattr(step, key) is not None:
            doc[key] = getattr(step, key)
    return doc


# --- Reading the document ----------------------------------------------------------------------


def _load_document(raw: bytes) -> Any:
    try:
        # JSON first: it is what we store, and YAML reads some JSON escapes differently.
        doc = json.loads(raw)
    except RecursionError:
        raise InvalidArgument("the definition is nested too deeply") from None
    except ValueError:
        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())
            raise InvalidArgument(f"the definition is neither JSON nor YAML: {problem}") from None
        except RecursionError:
            raise InvalidArgument("the definition is nested too deeply") from None
    _check_json(doc)
    return doc


def _check_json(doc: Any) -> None:
    """Only what JSON can say: YAML also makes dates, sets, binary and non-string keys."""
    nodes = 0
    stack: list[tuple[Any, str, int]] = [(doc, "the definition", 0)]
    while stack:
        value, where, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            raise InvalidArgument("the definition is too large once its YAML aliases are expanded")
        if depth > _MAX_DEPTH:
            raise InvalidArgument(f"the definition is nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidArgument(f"{where}: key {key!r} is not a string; quote it")
                _check_text(key, where)
                stack.append((item, f"{where}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{where}: {value} is not a JSON number")
        elif value is not None and not isinstance(value, bool | int | float):
            raise InvalidArgument(f"{where}: {str(value)[:40]} is not a JSON value; quote it")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{where}: a string holds a lone surrogate") from None


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], label: str) -> None:
    """Refuses unknown keys, which are mostly typos of known ones."""
    for key in obj:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise InvalidArgument(f'{label}: unknown key "{key}"{hint}')


def _build(
    name: str, doc: Any, known_types: set[str] | None, known_workflows: set[str] | None
) -> WorkflowDef:
    if not _WORKFLOW_NAME.fullmatch(name):
        raise InvalidArgument(
            f"workflow name {show(name)} must be 1-63 lowercase letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    if not isinstance(doc, dict):
        raise InvalidArgument("a workflow definition must be an object")
    label = f'workflow "{name}"'
    _check_keys(doc, _WORKFLOW_KEYS, label)
    if doc.get("name", name) != name:
        raise InvalidArgument(f"{label}: the definition names itself {show(doc['name'])}")
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidArgument(f"{label}: steps must be a non-empty list")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidArgument(f"{label}: {len(raw_steps)} steps; the limit is {MAX_STEPS}")

    names: list[str] = []
    for i, raw in enumerate(raw_steps):
        names.append(_step_name(raw, f"step #{i + 1}", names))
    raw_failure = doc.get("on_failure")
    failure_name = None
    if raw_failure is not None:
        failure_name = _step_name(raw_failure, "on_failure", names)

    steps = tuple(
        _step(raw, f'step "{n}"', known_types, set(names))
        for n, raw in zip(names, raw_steps, strict=True)
    )
    for step in steps:
        if step.workflow == name:
            raise InvalidArgument(f'step "{step.name}": a workflow cannot run itself')
        if known_workflows is not None and step.workflow and step.workflow not in known_workflows:
            raise InvalidArgument(
                f'step "{step.name}": no workflow "{step.workflow}" is registered'
            )
    cycle = _find_cycle(steps)
    if cycle:
        path = " -> ".join(f'"{n}"' for n in cycle)
        raise InvalidArgument(f"steps depend on each other in a cycle: {path}")
    on_failure = None
    if raw_failure is not None:
        on_failure = _step(raw_failure, f'on_failure step "{failure_name}"', known_types, None)

    defn = WorkflowDef(
        name=name,
        steps=steps,
        timeout_s=_seconds(doc.get("timeout_s"), label, "timeout_s", MAX_WORKFLOW_TIMEOUT_S),
        on_failure=on_failure,
        triggers=_triggers(doc.get("triggers"), label),
        schedule=_schedule(doc.get("schedule"), label),
    )
    for step in steps:
        check_references(step, f'step "{step.name}"', defn.ancestors(step.name), set(names))
    if on_failure is not None:
        check_references(on_failure, f'on_failure step "{on_failure.name}"', None, set(names))
    return defn


def _step_name(raw: Any, label: str, taken: list[str]) -> str:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{label} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{label}: name {show(name)} must be 1-64 letters, digits, '_' or '-'"
        )
    if name in taken:
        raise InvalidArgument(f'{label}: another step is already named "{name}"')
    return name


def _step(
    raw: dict[str, Any], label: str, known_types: set[str] | None, step_names: set[str] | None
) -> StepDef:
    """One step, references aside. `step_names` is None for the on_failure step."""
    _check_keys(raw, _STEP_KEYS, label)
    name = raw["name"]
    depends_on: tuple[str, ...] = ()
    if step_names is None:
        # It runs once the run has failed, whatever failed: there is nothing to wait for.
        for key in ("depends_on", "for_each"):
            if raw.get(key) is not None:
                raise InvalidArgument(f"{label}: on_failure cannot have {key}")
    else:
        depends_on = _depends_on(raw.get("depends_on"), label, name, step_names)
    for_each = raw.get("for_each")
    if for_each is not None and not (isinstance(for_each, dict) and "$ref" in for_each):
        raise InvalidArgument(f'{label}: for_each must be a {{"$ref": ...}} naming a list')
    when = raw.get("when")
    if isinstance(when, list) or (isinstance(when, dict) and "$ref" not in when):
        raise InvalidArgument(
            f'{label}: when must be true, false, a number, a string or a {{"$ref": ...}}'
        )
    queue = raw.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise InvalidArgument(f"{label}: queue must be a non-empty string")
    fallback = raw.get("fallback")
    child = raw.get("workflow")
    if child is not None:
        if "type" in raw:
            raise InvalidArgument(f"{label}: a step runs a type or a workflow, not both")
        if not isinstance(child, str) or not _WORKFLOW_NAME.fullmatch(child):
            raise InvalidArgument(f"{label}: workflow must name a workflow")
        for key in _TASK_ONLY_KEYS:
            if raw.get(key) is not None:
                raise InvalidArgument(f"{label}: a step that runs a workflow takes no {key}")
    return StepDef(
        name=name,
        type="" if child is not None else _type_name(raw.get("type"), label, "type", known_types),
        workflow=child,
        input=raw.get("input", {}),
        depends_on=depends_on,
        for_each=for_each,
        when=when,
        retry=_retry(raw.get("retry"), label),
        timeout_s=_seconds(raw.get("timeout_s"), label, "timeout_s", MAX_STEP_TIMEOUT_S),
        fallback=None if fallback is None else _type_name(fallback, label, "fallback", known_types),
        queue=queue,
    )


def _type_name(value: Any, label: str, key: str, known_types: set[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{label}: {key} must be a non-empty string")
    if known_types is not None and value not in known_types:
        raise InvalidArgument(f'{label}: no agent serves type "{value}"')
    return value


def _depends_on(value: Any, label: str, name: str, step_names: set[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidArgument(f"{label}: depends_on must be a list of step names")
    seen: list[str] = []
    for dep in value:
        if not isinstance(dep, str) or dep not in step_names:
            raise InvalidArgument(f"{label}: depends_on names unknown step {show(dep)}")
        if dep == name:
            raise InvalidArgument(f"{label}: depends on itself")
        if dep in seen:
            raise InvalidArgument(f'{label}: depends_on names "{dep}" twice')
        seen.append(dep)
    return tuple(seen)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(value: Any, label: str, key: str, limit: float) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not 0 < value <= limit:
        raise InvalidArgument(
            f"{label}: {key} must be a number of seconds above 0 and at most {limit:g}, "
            f"not {show(value)}"
        )
    return float(value)


def _retry(value: Any, label: str) -> RetrySpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{label}: retry must be an object")
    _check_keys(value, _RETRY_KEYS, f"{label} retry")
    attempts = value.get("max_attempts", RetrySpec.max_attempts)
    if type(attempts) is not int or not 1 <= attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"{label}: retry max_attempts must be a whole number from 1 to {MAX_ATTEMPTS}, "
            f"not {show(attempts)}"
        )
    backoffs = []
    for key in ("initial_backoff_s", "max_backoff_s"):
        backoff = value.get(key, getattr(RetrySpec, key))
        if not _is_number(backoff) or not 0 <= backoff <= MAX_STEP_TIMEOUT_S:
            raise InvalidArgument(
                f"{label}: retry {key} must be a number of seconds from 0 to "
                f"{MAX_STEP_TIMEOUT_S:g}, not {show(backoff)}"
            )
        backoffs.append(float(backoff))
    if backoffs[0] > backoffs[1]:
        raise InvalidArgument(
            f"{label}: retry initial_backoff_s ({backoffs[0]:g}) is above "
            f"max_backoff_s ({backoffs[1]:g})"
        )
    return RetrySpec(attempts, backoffs[0], backoffs[1])


def _triggers(value: Any, label: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidArgument(f"{label}: triggers must be a list of event types")
    for event in value:
        if not isinstance(event, str) or not _EVENT_TYPE.fullmatch(event):
            raise InvalidArgument(
                f"{label}: trigger {show(event)} is not an event type like task.dead_lettered"
            )
    if len(set(value)) < len(value):
        raise InvalidArgument(f"{label}: a trigger is listed twice")
    return tuple(value)


def _schedule(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{label}: schedule must be a cron expression string")
    expr = " ".join(value.split())
    try:
        cron.check(expr)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{label}: {exc}") from None
    return expr


def _find_cycle(steps: tuple[StepDef, ...]) -> list[str] | None:
    """One cycle, as the path around it (first name repeated at the end), or None."""
    deps = {s.name: s.depends_on for s in steps}
    done: set[str] = set()
    for root in deps:
        if root in done:
            continue
        path, pending = [root], [iter(deps[root])]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                done.add(path.pop())
                pending.pop()
            elif dep in path:
                return [*path[path.index(dep) :], dep]
            elif dep not in done:
                path.append(dep)
                pending.append(iter(deps[dep]))
    return None


# --- References ------------------------------------------------------------------------------
