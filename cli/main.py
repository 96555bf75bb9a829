"""`agentry`: the operator's command line.

    agentry token --role ROLE          a dev token for the local stack
    agentry tasks submit|get|list|cancel
    agentry dlq list|redrive           dead letters
    agentry workflows apply|get        workflow definitions, from YAML files
    agentry runs start|get|watch       workflow runs
    agentry report                     the analysis service's reports
    agentry insights                   anomalies and failure patterns it noticed
    agentry canary analyze|list|get    canary verdicts (analyze exits by the verdict)
    agentry audit verify               the gateway checks the audit chain (admin token)
    agentry keys new|use|rotate        data keys (`agentry keys --help` on rotating)

REST commands read AGENTRY_URL and AGENTRY_TOKEN; `--json` prints the gateway's answer for
scripts. An error is one line on stderr and a non-zero exit."""

import argparse
import os
import sys

from cli.commands import (
    audit,
    canary,
    insights,
    keys,
    report,
    runs,
    tasks,
    token,
    workflows,
)
from cli.gateway import CliError
from cli.settings import CliSettings

USAGE_ERROR = 2
INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, like every other error, instead of the usage and the message."""
        self.exit(USAGE_ERROR, f"{self.prog}: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="agentry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="AGENTRY_URL (default http://127.0.0.1:8080) and AGENTRY_TOKEN reach the gateway.",
    )
    commands = top.add_subparsers(metavar="COMMAND", required=True)
    for area in (token, tasks, workflows, runs, report, insights, canary, audit, keys):
        area.register(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args, CliSettings()))
    except CliError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"agentry: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`agentry tasks list | head`): nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
