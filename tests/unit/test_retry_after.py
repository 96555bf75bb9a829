"""Reading an upstream's Retry-After: delay-seconds or an HTTP-date, never negative, capped."""

from email.utils import formatdate

import pytest

from services.task_agent.http_builtins import MAX_RETRY_AFTER_S, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("999999999", MAX_RETRY_AFTER_S),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_to_wait(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [None, "", "soon", "nan", "inf", "Mon, 99 Foo 2024"])
def test_an_absent_or_unreadable_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None
