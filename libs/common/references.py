"""References in a JSON template: `{"$ref": "a.b.0"}` names a value by its path in a
context, found and resolved, never evaluated as code. Workflow steps build their inputs with
them, and task continuations their payloads."""

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from libs.common.errors import InvalidArgument

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


def replace_refs(template: Any, replace: Callable[[str], Any]) -> Any:
    """A copy of `template` with every reference replaced by `replace(reference)`, which is
    put in as it is: references inside it are not followed."""
    if isinstance(template, dict):
        if "$ref" in template:
            return replace(_ref_of(template))
        return {key: replace_refs(value, replace) for key, value in template.items()}
    if isinstance(template, list):
        return [replace_refs(value, replace) for value in template]
    return template


def resolve(template: Any, context: Mapping[str, Any]) -> Any:
    """A copy of `template` with every reference replaced by a copy of the value it names in
    `context` (a workflow's: input, steps (name -> {"output": ...}), item, error), as data."""
    return replace_refs(template, lambda ref: copy.deepcopy(_lookup(ref, context)))


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
