"""`agentry runs start|get|watch`: workflow runs."""

import argparse
import shutil
import sys
import time
from datetime import datetime
from typing import Any

from cli.commands import Commands, add_json_flag, json_value
from cli.gateway import Gateway
from cli.output import as_json, brief, cut, fields, line, table, when
from cli.progress import ENDED, glyphs_for, progress_line
from cli.settings import CliSettings

WATCH_INTERVAL_S = 0.3


def start(args: argparse.Namespace, settings: CliSettings) -> int:
    body: dict[str, Any] = {}
    if "input" in args:
        body["input"] = args.input
    if args.version is not None:
        body["version"] = args.version
    with Gateway(settings) as gateway:
        reply = gateway.call(
            "POST",
            f"/v1/workflows/{args.workflow}/runs",
            json=body,
            idempotency_key=args.idempotency_key,
        )
    run = reply.json()
    if args.json:
        as_json(run)
    elif reply.status_code == 200:
        line(f"run {run['id']} was already started with this idempotency key: {run['state']}")
    else:
        line(f"run {run['id']} started ({run['workflow']} version {run['version']})")
    return 0


def _tasks(step: dict[str, Any]) -> str:
    ids = step["task_ids"]
    return ids[0] if len(ids) == 1 else f"{len(ids)} tasks" if ids else "-"


def get(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        run = gateway.json("GET", f"/v1/runs/{args.id}")
    if args.json:
        as_json(run)
        return 0
    fields(
        [
            ("run", run["id"]),
            ("workflow", f"{run['workflow']} version {run['version']}"),
            ("state", run["state"]),
            ("started", when(run["created_at"])),
            ("error", run["error"] or ""),
            ("output", brief(run["output"], 200)),
        ]
    )
    line()
    table(
        ("STEP", "STATE", "ATTEMPTS", "TASKS", "ERROR"),
        [
            (s["name"], s["state"], str(s["attempts"]), _tasks(s), cut(s["error"], 60))
            for s in run["steps"]
        ],
    )
    return 0


def _ending(run: dict[str, Any]) -> str:
    text = f"run {run['id']} {run['state']}"
    if run["created_at"] and run["updated_at"]:
        took = datetime.fromisoformat(run["updated_at"]) - datetime.fromisoformat(run["created_at"])
        text += f" after {took.total_seconds():.1f} s"
    return text + (f": {run['error']}" if run["error"] else "")


def _on_failure(gateway: Gateway, run: dict[str, Any]) -> str | None:
    workflow = gateway.json(
        "GET", f"/v1/workflows/{run['workflow']}", params={"version": run["version"]}
    )
    step = (workflow["definition"] or {}).get("on_failure") or {}
    return step.get("name")


def watch(args: argparse.Namespace, settings: CliSettings) -> int:
    """Follows the run to its end; exits 0 when it succeeded, 1 otherwise."""
    live = sys.stdout.isatty() and not args.json
    glyphs = glyphs_for(sys.stdout.encoding)
    seen: dict[str, str] = {}
    drawn = ""
    with Gateway(settings) as gateway:
        run = gateway.json("GET", f"/v1/runs/{args.id}")
        # The on_failure step counts only once it runs: a run that succeeds never needs it.
        standby = _on_failure(gateway, run)
        if not live and not args.json:
            line(f"run {run['id']}: {run['workflow']} version {run['version']}, {run['state']}")
        while True:
            steps = [s for s in run["steps"] if s["name"] != standby or s["state"] != "PENDING"]
            if live:
                width = shutil.get_terminal_size().columns - 1
                drawn = _redraw(progress_line(steps, glyphs, width), drawn)
            elif not args.json:
                _changes(steps, seen)
            seen = {s["name"]: s["state"] for s in steps}
            if run["state"] != "RUNNING":
                break
            time.sleep(args.interval)
            run = gateway.json("GET", f"/v1/runs/{args.id}")
    if live:
        line()
    if args.json:
        as_json(run)
    else:
        line(_ending(run))
    return 0 if run["state"] == "SUCCEEDED" else 1


def _redraw(text: str, drawn: str) -> str:
    """Draws `text` over the line drawn before, when it differs."""
    if text != drawn:
        sys.stdout.write(f"\r{text}\x1b[K")
        sys.stdout.flush()
    return text


def _changes(steps: list[dict[str, Any]], seen: dict[str, str]) -> None:
    """A line for each step whose state changed since `seen`, counting as they end."""
    done = sum(seen.get(s["name"], "PENDING") in ENDED for s in steps)
    for step in steps:
        before = seen.get(step["name"], "PENDING")
        if before == step["state"]:
            continue
        done += (step["state"] in ENDED) - (before in ENDED)
        line(f"{done}/{len(steps)} steps: {step['name']} {step['state']}")


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.05 <= seconds <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.05 to 60")
    return seconds


def register(commands: Commands) -> None:
    runs = commands.add_parser("runs", help="workflow runs").add_subparsers(
        metavar="COMMAND", required=True
    )
    starting = runs.add_parser("start", help="start a run of a workflow")
    starting.add_argument("workflow")
    starting.add_argument(
        "--input",
        type=json_value,
        default=argparse.SUPPRESS,
        help="the run's input as JSON, or @FILE (default: {})",
    )
    starting.add_argument("--version", type=int, help="default: the latest")
    starting.add_argument("--idempotency-key", help="a retry with the same key starts nothing")
    starting.set_defaults(run=start)

    getting = runs.add_parser("get", help="a run and its steps")
    getting.add_argument("id")
    getting.set_defaults(run=get)

    watching = runs.add_parser(
        "watch", help="follow a run to its end: exit 0 when it succeeded, 1 when it did not"
    )
    watching.add_argument("id")
    watching.add_argument("--interval", type=_interval, default=WATCH_INTERVAL_S, metavar="SECONDS")
    watching.set_defaults(run=watch)

    for parser in (starting, getting, watching):
        add_json_flag(parser)
