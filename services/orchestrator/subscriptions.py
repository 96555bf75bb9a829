"""Outbound webhook subscriptions: what a valid one is, which events it wants, and their
creation and removal. The orchestrator delivers what they want (see `deliveries`)."""

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from libs.common.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_URL_CHARS = 2048
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
MAX_EVENT_TYPES = 20
MAX_EVENT_TYPE_CHARS = 128
# An event type ("task.dead_lettered"), a prefix of dotted words and a wildcard ("task.*"),
# or "*" for every event.
_EVENT_TYPE = re.compile(r"\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?")


@dataclass(frozen=True)
class NewSubscription:
    url: str
    event_types: tuple[str, ...]
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    url: str
    event_types: tuple[str, ...]
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class Signing:
    """A subscription with its secret, opened: what a delivery needs."""

    subscription: Subscription
    secret: str = field(repr=False)

    @property
    def event_types(self) -> tuple[str, ...]:
        return self.subscription.event_types


def check(url: str, event_types: Sequence[str], secret: str) -> NewSubscription:
    """The subscription asked for, or InvalidArgument naming the field that is wrong."""
    return NewSubscription(_url(url), _event_types(event_types), _secret(secret))


def _url(url: str) -> str:
    if not url:
        raise InvalidArgument("url is required: an http or https URL")
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"url is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument("url may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        # Reading the port raises ValueError for one out of range or not a number.
        host, _ = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidArgument(f"url is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidArgument(
            f"url must be an http or https URL, not {parts.scheme or 'one without a scheme'}"
        )
    if not host:
        raise InvalidArgument("url has no host")
    return url


def _event_types(event_types: Sequence[str]) -> tuple[str, ...]:
    if not event_types:
        raise InvalidArgument("event_types is required: at least one event type, or '*'")
    if len(event_types) > MAX_EVENT_TYPES:
        raise InvalidArgument(f"event_types holds more than {MAX_EVENT_TYPES} entries")
    for event_type in event_types:
        if len(event_type) > MAX_EVENT_TYPE_CHARS or not _EVENT_TYPE.fullmatch(event_type):
            raise InvalidArgument(
                f"event_types: {event_type[:MAX_EVENT_TYPE_CHARS]!r} is not an event type"
                " ('task.dead_lettered'), a prefix with a wildcard ('task.*') or '*'"
            )
    return tuple(dict.fromkeys(event_types))


def _secret(secret: str) -> str:
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise InvalidArgument(
            f"secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters long"
        )
    if not secret.isprintable():
        raise InvalidArgument("secret may not contain control characters")
    return secret


def matches(pattern: str, event_type: str) -> bool:
    if pattern == "*" or pattern == event_type:
        return True
    return pattern.endswith(".*") and event_type.startswith(pattern[:-1])


class Subscribed(Protocol):
    @property
    def event_types(self) -> tuple[str, ...]: ...


S = TypeVar("S", bound=Subscribed)

# Event types whose matches a Matcher remembers; past this it starts again empty.
_MATCH_CACHE_LIMIT = 10_000


class Matcher(Generic[S]):
    """Which subscriptions want an event type, each once however many of its patterns
    match; remembered per type (there are few types, and very many events)."""

    def __init__(self, subscriptions: Sequence[S]) -> None:
        self._subscriptions = list(subscriptions)
        self._by_type: dict[str, list[S]] = {}

    def __len__(self) -> int:
        return len(self._subscriptions)

    def wanting(self, event_type: str) -> list[S]:
        found = self._by_type.get(event_type)
        if found is None:
            if len(self._by_type) >= _MATCH_CACHE_LIMIT:
                self._by_type.clear()
            found = self._by_type[event_type] = [
                s
                for s in self._subscriptions
                if any(matches(pattern, event_type) for pattern in s.event_types)
            ]
        return found


def parse_id(subscription_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(subscription_id)
    except ValueError:
        raise InvalidArgument("subscription_id is not a subscription id (a UUID)") from None


class SubscriptionStoreLike(Protocol):
    async def add(
        self, new: NewSubscription, created_by: str, limit: int
    ) -> Subscription | None: ...

    async def all(self) -> list[Subscription]: ...

    async def delete(self, subscription_id: uuid.UUID) -> bool: ...


class Subscriptions:
    """Creating, listing and deleting subscriptions; `on_change` is told of every change
    (this orchestrator's deliveries then read them again at once)."""

    def __init__(
        self, store: SubscriptionStoreLike, limit: int, on_change: Callable[[], None]
    ) -> None:
        self._store = store
        self._limit = limit
        self._on_change = on_change

    async def create(
        self, url: str, event_types: Sequence[str], secret: str, created_by: str
    ) -> Subscription:
        created = await self._store.add(check(url, event_types, secret), created_by, self._limit)
        if created is None:
            raise FailedPrecondition(
                f"there are {self._limit} webhook subscriptions already, the most there may"
                " be: delete one first"
            )
        self._on_change()
        return created

    async def list(self) -> list[Subscription]:
        return await self._store.all()

    async def delete(self, subscription_id: str) -> None:
        if not await self._store.delete(parse_id(subscription_id)):
            raise NotFound(f"no webhook subscription {subscription_id}")
        self._on_change()
