"""`agentry tasks submit|get|list|cancel` and `agentry dlq list|redrive`: the task service
through the gateway."""

import argparse
from typing import Any

from cli.commands import Commands, add_json_flag, json_value
from cli.gateway import Gateway
from cli.output import as_json, brief, cut, fields, line, page, when
from cli.settings import CliSettings

STATES = ("QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED")
PRIORITIES = ("high", "normal", "low")


def _summary(task: dict[str, Any]) -> str:
    return f"{task['type']}, {task['state']}, queue {task['queue']}, priority {task['priority']}"


def submit(args: argparse.Namespace, settings: CliSettings) -> int:
    body = {"type": args.type, "queue": args.queue, "priority": args.priority}
    body = {k: v for k, v in body.items() if v is not None}
    if "payload" in args:
        body["payload"] = args.payload
    with Gateway(settings) as gateway:
        task = gateway.json(
            "POST",
            "/v1/tasks",
            json=body,
            idempotency_key=args.idempotency_key,
        )
    if args.json:
        as_json(task)
    else:
        line(f"task {task['id']} submitted ({_summary(task)})")
    return 0


def get(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        task = gateway.json("GET", f"/v1/tasks/{args.id}")
    if args.json:
        as_json(task)
        return 0
    error = task["error"]
    fields(
        [
            ("id", task["id"]),
            ("type", task["type"]),
            ("state", task["state"]),
            ("attempts", str(task["attempts"])),
            ("queue", task["queue"]),
            ("priority", task["priority"]),
            ("agent", task["agent"] or ""),
            ("created", when(task["created_at"])),
            ("finished", when(task["finished_at"]) if task["finished_at"] else ""),
            ("payload", brief(task["payload"], 200)),
            ("result", brief(task["result"], 200)),
            ("error", f"{error['reason']}: {error['message']}" if error else ""),
        ]
    )
    return 0


def list_tasks(args: argparse.Namespace, settings: CliSettings) -> int:
    params = {"state": args.state, "type": args.type, "queue": args.queue, "page_size": args.limit}
    with Gateway(settings) as gateway:
        answer = gateway.json("GET", "/v1/tasks", params=params)
    headers = ("ID", "TYPE", "STATE", "ATTEMPTS", "QUEUE", "CREATED")
    page(answer, args.json, "no tasks", headers, _task_cells, args.limit)
    return 0


def _task_cells(t: dict[str, Any]) -> tuple[str, ...]:
    return (t["id"], t["type"], t["state"], str(t["attempts"]), t["queue"], when(t["created_at"]))


def cancel(args: argparse.Namespace, settings: CliSettings) -> int:
    body = {"reason": args.reason} if args.reason else None
    with Gateway(settings) as gateway:
        task = gateway.json("POST", f"/v1/tasks/{args.id}/cancel", json=body)
    if args.json:
        as_json(task)
    elif task["state"] == "CANCELLED":
        line(f"task {task['id']} cancelled")
    else:
        line(f"task {task['id']} is {task['state']}: its agent has been asked to stop it")
    return 0


def dead_letters(args: argparse.Namespace, settings: CliSettings) -> int:
    params = {"type": args.type, "queue": args.queue, "page_size": args.limit}
    with Gateway(settings) as gateway:
        answer = gateway.json("GET", "/v1/dead-letters", params=params)
    headers = ("ID", "TYPE", "REASON", "ERROR", "CREATED", "REDRIVEN AS")
    page(answer, args.json, "no dead letters", headers, _dead_letter_cells, args.limit)
    return 0


def _dead_letter_cells(d: dict[str, Any]) -> tuple[str, ...]:
    error = d["task"]["error"]
    return (
        d["id"],
        d["task"]["type"],
        d["reason"],
        cut(error["message"] if error else "", 50),
        when(d["created_at"]),
        d["redriven_task_id"] or "-",
    )


def redrive(args: argparse.Namespace, settings: CliSettings) -> int:
    body = {"payload": args.payload} if "payload" in args else None
    with Gateway(settings) as gateway:
        task = gateway.json("POST", f"/v1/dead-letters/{args.id}/redrive", json=body)
    if args.json:
        as_json(task)
    else:
        line(f"dead letter {args.id} redriven as task {task['id']} ({_summary(task)})")
    return 0


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 500")
    return int(text)


def _limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_page_size, default=50, metavar="N", help="1-500")


def _payload(parser: argparse.ArgumentParser, meaning: str) -> None:
    # Absent, not None, when not given: `--payload null` is a payload.
    parser.add_argument("--payload", type=json_value, default=argparse.SUPPRESS, help=meaning)


def register(commands: Commands) -> None:
    tasks = commands.add_parser("tasks", help="tasks").add_subparsers(
        metavar="COMMAND", required=True
    )
    submitting = tasks.add_parser("submit", help="submit a task")
    submitting.add_argument("type")
    _payload(submitting, "the task's input as JSON, or @FILE (default: null)")
    submitting.add_argument("--queue")
    submitting.add_argument("--priority", choices=PRIORITIES)
    submitting.add_argument("--idempotency-key", help="a retry with the same key submits nothing")
    submitting.set_defaults(run=submit)

    getting = tasks.add_parser("get", help="a task, with its result or error")
    getting.add_argument("id")
    getting.set_defaults(run=get)

    listing = tasks.add_parser("list", help="tasks, newest first")
    listing.add_argument("--state", type=str.upper, choices=STATES)
    listing.add_argument("--type")
    listing.add_argument("--queue")
    _limit(listing)
    listing.set_defaults(run=list_tasks)

    cancelling = tasks.add_parser("cancel", help="cancel a task")
    cancelling.add_argument("id")
    cancelling.add_argument("--reason")
    cancelling.set_defaults(run=cancel)

    dlq = commands.add_parser("dlq", help="dead letters").add_subparsers(
        metavar="COMMAND", required=True
    )
    letters = dlq.add_parser("list", help="tasks that failed for good")
    letters.add_argument("--type")
    letters.add_argument("--queue")
    _limit(letters)
    letters.set_defaults(run=dead_letters)

    redriving = dlq.add_parser("redrive", help="submit a dead letter's task again")
    redriving.add_argument("id")
    _payload(redriving, "a new payload as JSON, or @FILE (default: the old one)")
    redriving.set_defaults(run=redrive)

    for parser in (submitting, getting, listing, cancelling, letters, redriving):
        add_json_flag(parser)
