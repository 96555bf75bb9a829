"""Cron schedules: five fields (minute hour day-of-month month day-of-week, Sunday = 0) with
`*`, numbers, ranges `a-b`, lists `a,b` and steps `*/n`, `a-b/n`."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from libs.common.errors import InvalidArgument

# name, lowest, highest
_CRON_FIELDS = (
    ("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
    ("day-of-week", 0, 6),
)  # fmt: skip
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    # As in Vixie cron: when either day field starts with "*" a day must match both, otherwise
    # either one is enough.
    either_day: bool

    def day_matches(self, when: datetime) -> bool:
        day_ok = when.day in self.days
        weekday_ok = (when.weekday() + 1) % 7 in self.weekdays  # cron counts from Sunday
        return day_ok or weekday_ok if self.either_day else day_ok and weekday_ok


@lru_cache(maxsize=256)
def _cron(expr: str) -> _Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidArgument(
            f'schedule "{expr}" needs 5 fields (minute hour day-of-month month day-of-week), '
            f"not {len(fields)}"
        )
    minutes, hours, days, months, weekdays = (
        _cron_field(expr, text, *spec) for text, spec in zip(fields, _CRON_FIELDS, strict=True)
    )
    day_star, weekday_star = fields[2].startswith("*"), fields[4].startswith("*")
    cron = _Cron(minutes, hours, days, months, weekdays, not day_star and not weekday_star)
    feasible = any(d <= _MONTH_DAYS[m - 1] for m in months for d in days)
    if weekday_star and not feasible:
        raise InvalidArgument(f'schedule "{expr}" never fires: no such day in those months')
    return cron


def _cron_field(expr: str, text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        if span == "*":
            first, last = low, high
        else:
            start, dash, end = span.partition("-")
            first = _cron_number(expr, start, name, low, high)
            last = _cron_number(expr, end, name, low, high) if dash else first
            if last < first:
                raise InvalidArgument(f'schedule "{expr}": {name} range {span} runs backwards')
            if step_text and not dash:
                raise InvalidArgument(f'schedule "{expr}": {name} step needs * or a range: {part}')
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
                raise InvalidArgument(f'schedule "{expr}": {name} step "{step_text}" is not >= 1')
            step = int(step_text)
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _cron_number(expr: str, text: str, name: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(f'schedule "{expr}": {name} "{text}" is not a number')
    if not low <= int(text) <= high:
        raise InvalidArgument(f'schedule "{expr}": {name} {text} is out of range {low}-{high}')
    return int(text)


def cron_matches(expr: str, when: datetime) -> bool:
    """Whether `expr` fires in the minute of `when`, read in `when`'s own time zone."""
    cron = _cron(expr)
    return (
        when.minute in cron.minutes
        and when.hour in cron.hours
        and when.month in cron.months
        and cron.day_matches(when)
    )


def next_fire(expr: str, after: datetime) -> datetime:
    """The first minute strictly after `after` at which `expr` fires, in `after`'s time zone."""
    cron = _cron(expr)
    when = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    # A full Gregorian cycle: an expression that fires at all fires within it.
    while when.year <= after.year + 400:
        if when.month not in cron.months:
            year, month = divmod(when.month, 12)
            when = when.replace(year=when.year + year, month=month + 1, day=1, hour=0, minute=0)
        elif not cron.day_matches(when):
            when = when.replace(hour=0, minute=0) + timedelta(days=1)
        elif when.hour not in cron.hours:
            when = when.replace(minute=0) + timedelta(hours=1)
        elif when.minute not in cron.minutes:
            when += timedelta(minutes=1)
        else:
            return when
    raise InvalidArgument(f'schedule "{expr}" never fires')


def check(expr: str) -> None:
    """Raises InvalidArgument naming what is wrong with `expr`."""
    _cron(expr)
