"""`agentry workflows apply|get`: workflow definitions, in YAML (or JSON) files."""

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from cli.commands import Commands, add_json_flag
from cli.gateway import CliError, Gateway
from cli.output import as_json, cut, fields, line, table, when
from cli.settings import CliSettings


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None


def _name(source: str, raw: bytes) -> str:
    """The definition's `name`: the orchestrator checks the rest."""
    try:
        definition = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or cut(str(exc), 200)
        raise CliError(f"{source} is not valid YAML: {problem}{where}") from None
    name = definition.get("name") if isinstance(definition, dict) else None
    if not isinstance(name, str) or not name:
        raise CliError(f"{source} has no `name`: the workflow is registered under it")
    return name


def apply(args: argparse.Namespace, settings: CliSettings) -> int:
    raw = _read(args.file)
    name = _name("stdin" if args.file == "-" else args.file, raw)
    media_type = "application/json" if args.file.endswith(".json") else "application/yaml"
    with Gateway(settings) as gateway:
        workflow = gateway.json(
            "PUT", f"/v1/workflows/{name}", content=raw, content_type=media_type
        )
    if args.json:
        as_json(workflow)
    else:
        line(f"workflow {workflow['name']} version {workflow['version']} applied")
    return 0


def _row(step: dict[str, Any], needs: str = "") -> tuple[str, str, str]:
    kind = str(step["type"]) if "type" in step else f"workflow {step.get('workflow', '?')}"
    if "for_each" in step:
        kind += " (for each)"
    return step["name"], kind, needs or ", ".join(step.get("depends_on") or []) or "-"


def get(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        workflow = gateway.json(
            "GET", f"/v1/workflows/{args.name}", params={"version": args.version}
        )
    if args.json:
        as_json(workflow)
        return 0
    definition = workflow["definition"] or {}
    fields(
        [
            ("workflow", workflow["name"]),
            ("version", str(workflow["version"])),
            ("created", when(workflow["created_at"])),
            ("schedule", str(definition.get("schedule") or "")),
            ("triggers", ", ".join(definition.get("triggers") or [])),
        ]
    )
    steps = list(definition.get("steps") or [])
    rows = [_row(step) for step in steps]
    if definition.get("on_failure"):
        rows.append(_row(definition["on_failure"], "(when the run fails)"))
    line()
    table(("STEP", "TYPE", "DEPENDS ON"), rows)
    return 0


def register(commands: Commands) -> None:
    workflows = commands.add_parser("workflows", help="workflow definitions").add_subparsers(
        metavar="COMMAND", required=True
    )
    applying = workflows.add_parser(
        "apply", help="register a definition as the workflow's next version"
    )
    applying.add_argument(
        "-f", "--file", required=True, metavar="FILE", help="YAML, or JSON when *.json; - is stdin"
    )
    applying.set_defaults(run=apply)

    getting = workflows.add_parser("get", help="a definition and its steps")
    getting.add_argument("name")
    getting.add_argument("--version", type=int, help="default: the latest")
    getting.set_defaults(run=get)

    for parser in (applying, getting):
        add_json_flag(parser)
