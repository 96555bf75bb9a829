"""`agentry canary`: the analysis service's canary verdicts. `analyze` compares a canary
version's task outcomes with the baseline's and exits by the verdict (0 PASS, 3 FAIL,
4 INCONCLUSIVE; 1 and 2 stay errors and usage), so a deploy script can gate on it as the
Argo Rollouts analysis does; `list` and `get` read the verdicts recorded."""

import argparse
from typing import Any

from cli.commands import Commands, add_json_flag
from cli.gateway import Gateway
from cli.output import as_json, line, page
from cli.settings import CliSettings

EXIT_CODES = {"PASS": 0, "FAIL": 3, "INCONCLUSIVE": 4}
HEADERS = ("CREATED", "VERDICT", "SUBJECT", "CANARY", "BASELINE", "WINDOW S", "ID")


def _cells(analysis: dict[str, Any]) -> list[str]:
    return [
        analysis["created_at"][:19].replace("T", " "),
        analysis["verdict"],
        analysis["subject"],
        analysis["canary"],
        analysis["baseline"],
        str(analysis["window_s"]),
        analysis["id"],
    ]


def _print(analysis: dict[str, Any], raw: bool) -> None:
    if raw:
        as_json(analysis)
        return
    line(
        f"{analysis['verdict']}: {analysis['canary']} against {analysis['baseline']}"
        f" ({analysis['subject']}, last {analysis['window_s']} s), id {analysis['id']}"
    )
    for reason in analysis["reasons"]:
        line(f"  {reason}")


def analyze(args: argparse.Namespace, settings: CliSettings) -> int:
    body = {
        "subject": args.subject,
        "baseline": args.baseline,
        "canary": args.canary,
        "window_s": args.window,
    }
    with Gateway(settings) as gateway:
        analysis = gateway.json("POST", "/v1/canary-analyses", json=body)
    _print(analysis, args.json)
    return EXIT_CODES[analysis["verdict"]]


def listing(args: argparse.Namespace, settings: CliSettings) -> int:
    params: dict[str, Any] = {"page_size": args.limit}
    if args.subject:
        params["subject"] = args.subject
    with Gateway(settings) as gateway:
        answer = gateway.json("GET", "/v1/canary-analyses", params=params)
    page(answer, args.json, "no canary verdicts", HEADERS, _cells)
    return 0


def get(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        analysis = gateway.json("GET", f"/v1/canary-analyses/{args.id}")
    _print(analysis, args.json)
    return 0


def register(commands: Commands) -> None:
    canary = commands.add_parser("canary", help="canary verdicts").add_subparsers(
        metavar="COMMAND", required=True
    )
    analyzing = canary.add_parser(
        "analyze",
        help="judge a canary version against the baseline: exit 0 PASS, 3 FAIL, 4 INCONCLUSIVE",
    )
    analyzing.add_argument("--canary", required=True, help="the new version")
    analyzing.add_argument("--baseline", required=True, help="the version it is compared with")
    analyzing.add_argument("--subject", default="*", help='a task type, or "*" (default)')
    analyzing.add_argument(
        "--window", type=int, default=900, help="seconds back from now (default 900)"
    )
    analyzing.set_defaults(run=analyze)

    listed = canary.add_parser("list", help="the verdicts recorded, newest first")
    listed.add_argument("--subject", help="only this task type")
    listed.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listed.set_defaults(run=listing)

    getting = canary.add_parser("get", help="one verdict and the statistics behind it")
    getting.add_argument("id")
    getting.set_defaults(run=get)

    for parser in (analyzing, listed, getting):
        add_json_flag(parser)
