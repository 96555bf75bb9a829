"""`agentry report`: the analysis service's report over a window, grouped by task type,
queue or agent version."""

import argparse

from cli.commands import Commands, add_json_flag
from cli.gateway import Gateway
from cli.output import as_json, cut, line, table
from cli.settings import CliSettings

HEADERS = (
    "GROUP",
    "TOTAL",
    "OK %",
    "PER S",
    "P50 S",
    "P95 S",
    "P99 S",
    "RETRY %",
    "DLQ",
    "TOP ERROR",
)


def _top_error(row: dict) -> str:
    if not row["top_errors"]:
        return ""
    top = row["top_errors"][0]
    return f"{top['count']} x {cut(top['fingerprint'], 50)}"


def _cells(row: dict) -> list[str]:
    return [
        row["group"] or "-",
        str(row["total"]),
        f"{100 * row['success_rate']:.1f}",
        f"{row['throughput_per_s']:.3f}",
        f"{row['p50_s']:.3f}",
        f"{row['p95_s']:.3f}",
        f"{row['p99_s']:.3f}",
        f"{100 * row['retry_rate']:.1f}",
        str(row["dead_letters"]),
        _top_error(row),
    ]


def report(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        answer = gateway.json(
            "GET", "/v1/reports", params={"window": args.window, "group_by": args.group_by}
        )
    if args.json:
        as_json(answer)
    elif not answer["rows"]:
        line(f"no finished tasks in the last {args.window} s")
    else:
        table(HEADERS, [_cells(row) for row in answer["rows"]])
    return 0


def register(commands: Commands) -> None:
    reporting = commands.add_parser(
        "report", help="throughput, success rate, durations and top errors per group"
    )
    reporting.add_argument(
        "--window", type=int, default=3600, help="seconds back from now (default 3600)"
    )
    reporting.add_argument(
        "--group-by", choices=("type", "queue", "version"), default="type", dest="group_by"
    )
    add_json_flag(reporting)
    reporting.set_defaults(run=report)
