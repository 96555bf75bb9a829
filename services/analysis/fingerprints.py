"""Error fingerprints: an error message with what changes from one occurrence to the next
(ids, numbers, hex, timestamps, paths, addresses) replaced by placeholders, so the failures of
one cause share one fingerprint."""

import re

MAX_LENGTH = 200

# Order matters: the specific shapes go first, before the numbers inside them are taken.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
        "<uuid>",
    ),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
        ),
        "<ts>",
    ),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<ts>"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I), "<url>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"(?:[A-Za-z]:\\|~?/)[^\s'\":,()\[\]]*[/\\][^\s'\":,()\[\]]*"), "<path>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    # Long hex runs with at least one digit: hashes, object ids, trace ids.
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.I), "<hex>"),
    # Ids made of letters and digits together, such as ord_8f2k1 or task-12.
    (re.compile(r"\b[a-z]+[_-]?(?=[a-z_-]*\d)[a-z0-9_-]*\d[a-z0-9_-]*\b", re.I), "<id>"),
    # Numbers, with or without a unit after them (30s, 12ms, 3MB).
    (re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.I), "<n>"),
]
_SPACE = re.compile(r"\s+")


def fingerprint(message: str) -> str:
    """The normalised form of `message`: equal for errors that differ only in their
    particulars, short enough to be a key."""
    text = message.strip()
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    text = _SPACE.sub(" ", text)
    return text[:MAX_LENGTH] or "<empty>"
