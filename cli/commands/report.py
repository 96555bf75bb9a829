"""`agentry report`: the analysis service's reports, once the gateway serves them."""

import argparse

from cli.commands import Commands, add_json_flag
from cli.gateway import CliError, Gateway, GatewayError
from cli.output import as_json
from cli.settings import CliSettings

# Exit code when there is nothing to report from: not an error of the caller's.
NOT_BUILT = 2


def report(args: argparse.Namespace, settings: CliSettings) -> int:
    with Gateway(settings) as gateway:
        try:
            reports = gateway.json("GET", "/v1/reports")
        except GatewayError as exc:
            if exc.status != 404:
                raise
            raise CliError(
                "reports are not built yet: the gateway has no /v1/reports"
                " (the analysis service does not serve them)",
                exit_code=NOT_BUILT,
            ) from None
    # Their shape is the analysis service's to settle; until then they print as they come.
    as_json(reports)
    return 0


def register(commands: Commands) -> None:
    reporting = commands.add_parser("report", help="the analysis service's reports")
    add_json_flag(reporting)
    reporting.set_defaults(run=report)
