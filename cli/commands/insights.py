"""`agentry insights`: what the analysis service noticed, newest first: anomalies in failure
rate, p95 duration and queue lag per task type, and failure patterns."""

import argparse

from cli.commands import Commands, add_json_flag
from cli.gateway import Gateway
from cli.output import cut, page
from cli.settings import CliSettings

HEADERS = ("OPENED", "STATE", "SEVERITY", "KIND", "SUBJECT", "WINDOW", "EVIDENCE")


def _evidence(evidence: dict) -> str:
    if "value" in evidence and "expected" in evidence:
        return f"{evidence['value']:.3g} (expected {evidence['expected']:.3g})"
    if "fingerprints" in evidence:
        top = evidence["fingerprints"][0]
        return f"{top['count']} x {cut(top['fingerprint'], 50)}"
    for cohort in evidence.values():
        if isinstance(cohort, dict) and "cohort" in cohort:
            return f"{cohort['cohort']}: {100 * cohort['failure_rate']:.0f}% failing"
    return ""


def _cells(insight: dict) -> list[str]:
    start, end = insight["window_start"][11:16], insight["window_end"][11:16]
    return [
        insight["created_at"][:16].replace("T", " "),
        insight["state"],
        insight["severity"],
        insight["kind"],
        insight["subject"] or "-",
        f"{start}-{end}",
        _evidence(insight["evidence"]),
    ]


def insights(args: argparse.Namespace, settings: CliSettings) -> int:
    params = {"page_size": args.limit}
    for name in ("subject", "state", "window"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    with Gateway(settings) as gateway:
        answer = gateway.json("GET", "/v1/insights", params=params)
    page(answer, args.json, "no insights", HEADERS, _cells)
    return 0


def register(commands: Commands) -> None:
    listing = commands.add_parser(
        "insights", help="anomalies and failure patterns the analysis service noticed"
    )
    listing.add_argument("--subject", help="only this task type")
    listing.add_argument("--state", choices=("open", "resolved"))
    listing.add_argument("--window", type=int, help="only those seen in the last seconds")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    add_json_flag(listing)
    listing.set_defaults(run=insights)
