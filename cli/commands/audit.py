"""`agentry audit verify`: the gateway checks the audit log's hash chain."""

import argparse

from cli.commands import Commands, add_json_flag
from cli.gateway import Gateway
from cli.output import as_json, line
from cli.settings import CliSettings

# The gateway reads the whole chain: that takes a while on a long log.
VERIFY_TIMEOUT_S = 300.0


def verify(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings, timeout_s=VERIFY_TIMEOUT_S) as gateway:
        result = gateway.json("GET", "/v1/audit/verify")
    if args.json:
        as_json(result)
    elif result["ok"]:
        line(f"audit log intact: {result['checked']} rows, head {result['head_hash']}")
    else:
        line(
            f"AUDIT LOG TAMPERED: {len(result['problems'])} problem(s) in {result['checked']} rows"
        )
        for problem in result["problems"]:
            line(f"  row {problem['id']}: {problem['problem']}")
    return 0 if result["ok"] else 1


def register(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="the audit log").add_subparsers(
        metavar="COMMAND", required=True
    )
    verifying = audit.add_parser("verify", help="check the hash chain (admin token)")
    add_json_flag(verifying)
    verifying.set_defaults(run=verify)
