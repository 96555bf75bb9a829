"""References in a workflow definition: `{"$ref": "input.a.0" | "steps.<name>.output.x" |
"item" | "error"}`, checked against the definition at registration; resolving them is
in libs.common.references."""

from typing import TYPE_CHECKING, Any

from libs.common.errors import InvalidArgument
from libs.common.references import references

if TYPE_CHECKING:
    from services.orchestrator.definition import StepDef


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
