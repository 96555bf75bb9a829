"""Historical context: events folded into per-minute counts by type."""

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from agentry.events.v1 import events_pb2
from libs.common.events import event_time


def minute_of(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds - seconds % 60, tz=UTC)


def count_by_minute(events: Iterable[events_pb2.Event]) -> Counter[tuple[datetime, str]]:
    return Counter((minute_of(event_time(e)), e.type) for e in events)
