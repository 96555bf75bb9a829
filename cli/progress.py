"""The live line `agentry runs watch` draws on a terminal:

[##----] 2/6 steps · fetch ✓ nap … each · total ·
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENDED = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"})
# A hundred steps still draw a bar that fits.
BAR_MAX = 20


@dataclass(frozen=True)
class Glyphs:
    separator: str
    marks: dict[str, str]


UNICODE = Glyphs(
    " · ",
    {
        "PENDING": "·",
        "RUNNING": "…",
        "SUCCEEDED": "✓",
        "FAILED": "✗",
        "SKIPPED": "↷",
        "CANCELLED": "⊘",
    },
)
ASCII = Glyphs(
    " | ",
    {
        "PENDING": ".",
        "RUNNING": ">",
        "SUCCEEDED": "+",
        "FAILED": "x",
        "SKIPPED": "-",
        "CANCELLED": "/",
    },
)


def glyphs_for(encoding: str | None) -> Glyphs:
    """The marks the terminal's encoding can show."""
    try:
        (UNICODE.separator + "".join(UNICODE.marks.values())).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII
    return UNICODE


def ended(steps: Sequence[dict[str, Any]]) -> int:
    return sum(step["state"] in ENDED for step in steps)


def bar(done: int, total: int) -> str:
    width = max(1, min(total, BAR_MAX))
    filled = width if total == 0 else round(width * done / total)
    return f"[{'#' * filled}{'-' * (width - filled)}]"


def progress_line(steps: Sequence[dict[str, Any]], glyphs: Glyphs, width: int) -> str:
    """The line, at most `width` characters: when the steps do not fit, those that succeeded
    are counted instead of named, then the last ones are left out (`+N`)."""
    done = ended(steps)
    head = f"{bar(done, len(steps))} {done}/{len(steps)} steps{glyphs.separator}"
    named = [f"{s['name']} {glyphs.marks.get(s['state'], '?')}" for s in steps]
    text = head + " ".join(named)
    if len(text) <= width:
        return text
    succeeded = sum(s["state"] == "SUCCEEDED" for s in steps)
    rest = [n for n, s in zip(named, steps, strict=True) if s["state"] != "SUCCEEDED"]
    counted = [f"{succeeded} {glyphs.marks['SUCCEEDED']}"] if succeeded else []
    for keep in range(len(rest), -1, -1):
        left_out = [f"+{len(rest) - keep}"] if keep < len(rest) else []
        text = head + " ".join([*counted, *rest[:keep], *left_out])
        if len(text) <= width:
            return text
    return text[:width].rstrip()
