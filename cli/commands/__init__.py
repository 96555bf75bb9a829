"""The commands, one module per area; each has `register(commands)` to add its sub-commands.
A sub-command's handler takes the parsed arguments and the settings and returns the exit
code."""

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.settings import CliSettings

Handler = Callable[[argparse.Namespace, CliSettings], int]
Commands = Any  # argparse's _SubParsersAction, which it does not export


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the gateway's JSON answer, for scripts"
    )


def json_value(text: str) -> Any:
    """A JSON argument, or `@FILE` for one in a file."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:60]!r}") from None
