"""References in a workflow definition: `{"$ref": "input.a.0" | "steps.<name>.output.x" |
"item" | "error"}`, found and resolved against a run's values, never evaluated as code."""

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from libs.common.errors import InvalidArgument

if TYPE_CHECKING:
    from services.orchestrator.definition import StepDef

_INDEX = re.compile(r"[0-9]+")


def show(value: Any) -> str:
    """A value in an error message: JSON, cut short."""
    return json.dumps(value, default=str)[:60]


def references(template: Any) -> list[str]:
    """Every reference in `template`, in document order."""
    return list(_walk_refs(template))


def _walk_refs(template: Any) -> Iterator[str]:
    if isinstance(template, dict):
        if "$ref" in template:
            yield _ref_of(template)
        else:
            for value in template.values():
                yield from _walk_refs(value)
    elif isinstance(template, list):
        for value in template:
            yield from _walk_refs(value)


def _ref_of(obj: Mapping[str, Any]) -> str:
    ref = obj.get("$ref")
    if len(obj) != 1 or not isinstance(ref, str):
        raise InvalidArgument(
            f'a "$ref" object must have exactly one key, "$ref", holding a string, not {show(obj)}'
        )
    if not ref or "" in ref.split("."):
        raise InvalidArgument(f'reference "{ref}" has an empty part')
    return ref


def resolve(template: Any, context: Mapping[str, Any]) -> Any:
    """A copy of `template` with every reference replaced by the value it names in `context`
    (keys input, steps (name -> {"output": ...}), item, error). Values taken from `context` are
    copied as they are: references inside them are data, not followed."""
    if isinstance(template, dict):
        if "$ref" in template:
            return copy.deepcopy(_lookup(_ref_of(template), context))
        return {key: resolve(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [resolve(value, context) for value in template]
    return template


def _lookup(ref: str, context: Mapping[str, Any]) -> Any:
    value: Any = context
    for part in ref.split("."):
        if isinstance(value, Mapping):
            if part not in value:
                raise InvalidArgument(f'reference {ref}: no key "{part}"')
            value = value[part]
        elif isinstance(value, list | tuple) and _INDEX.fullmatch(part):
            if int(part) >= len(value):
                raise InvalidArgument(
                    f"reference {ref}: no index {part} in a list of {len(value)} items"
                )
            value = value[int(part)]
        else:
            kind = "a list" if isinstance(value, list | tuple) else show(value)
            raise InvalidArgument(f'reference {ref}: cannot look up "{part}" in {kind}')
    return value


def truthy(value: Any) -> bool:
    """Whether a `when` lets its step run: None, false, 0, "", [] and {} do not."""
    return bool(value)


def check_references(
    step: "StepDef", label: str, ancestors: set[str] | None, step_names: set[str]
) -> None:
    """`ancestors` is None for on_failure, which may read any step and the run's error."""
    for where, template in (
        ("input", step.input),
        ("for_each", step.for_each),
        ("when", step.when),
    ):
        try:
            refs = references(template)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{label}: {where}: {exc}") from None
        for ref in refs:
            root, *path = ref.split(".")
            if where == "for_each" and root not in ("input", "steps"):
                raise InvalidArgument(
                    f"{label}: for_each must name input… or steps.<name>.output…, not {ref}"
                )
            if root == "input":
                continue
            if root == "steps":
                if len(path) < 2 or path[1] != "output":
                    raise InvalidArgument(
                        f"{label}: reference {ref} must have the form steps.<name>.output…"
                    )
                if path[0] not in step_names:
                    raise InvalidArgument(
                        f"{label}: refers to steps.{path[0]}, which is not a step"
                    )
                if ancestors is not None and path[0] not in ancestors:
                    raise InvalidArgument(
                        f"{label}: refers to steps.{path[0]}, which is not among its dependencies"
                    )
            elif root == "item":
                if where != "input" or step.for_each is None:
                    raise InvalidArgument(
                        f'{label}: "item" can only be referenced in the input of a for_each step'
                    )
            elif root == "error":
                if ancestors is not None:
                    raise InvalidArgument(f'{label}: "error" can only be referenced in on_failure')
                if path:
                    raise InvalidArgument(f'{label}: "error" is a message and has no parts: {ref}')
            else:
                raise InvalidArgument(
                    f"{label}: reference {ref} must start with input, steps, item or error"
                )
