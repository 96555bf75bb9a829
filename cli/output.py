"""How answers reach the terminal: compact tables and lines for people, the JSON answer as
it came for scripts (`--json`)."""

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any


def line(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def as_json(value: Any) -> None:
    line(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns as wide as their widest cell; the last one is not padded."""
    body = [list(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *body, strict=True)]
    for row in [list(headers), *body]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        line("  ".join([*cells, row[-1]]).rstrip())


def page(
    answer: dict[str, Any],
    json_wanted: bool,
    empty: str,
    headers: Sequence[str],
    cells: Callable[[Any], Sequence[str]],
    limit: int | None = None,
) -> None:
    """A page of a list (`{"items", "next_page_token"}`): the JSON as it came, else `empty`
    or a table of its items, saying when there are more than the `limit` shown."""
    if json_wanted:
        as_json(answer)
    elif not answer["items"]:
        line(empty)
    else:
        table(headers, [cells(item) for item in answer["items"]])
        if limit is not None and answer.get("next_page_token"):
            line(f"(more: the first {limit} shown; --limit raises it, to 500)")


def fields(pairs: Iterable[tuple[str, str]]) -> None:
    """`name  value` lines, the values aligned; pairs without a value are left out."""
    shown = [(name, value) for name, value in pairs if value]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        line(f"{name.ljust(width)}  {value}")


def when(stamp: str | None) -> str:
    """An ISO time from the gateway, in local time to the second."""
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def brief(value: Any, limit: int = 60) -> str:
    """A value as compact JSON, cut to `limit` characters."""
    if value is None:
        return ""
    return cut(json.dumps(value, separators=(",", ":"), ensure_ascii=False), limit)


def cut(text: str | None, limit: int = 60) -> str:
    """`text` on one line, at most `limit` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
