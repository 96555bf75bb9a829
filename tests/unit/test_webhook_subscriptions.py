"""Outbound webhook subscriptions without I/O: what a valid subscription is, which events it
wants, and the `webhook.deliver` tasks the orchestrator makes of them: one per subscription
and event, never for a delivery's own events, with a secret only that delivery opens."""

import base64
import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2
from libs.common.crypto import Keyring
from libs.common.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.common.events import make_event
from libs.common.webhooks import canonical_json
from services.orchestrator.deliveries import DeliveryRetry, WebhookDeliveries
from services.orchestrator.subscriptions import (
    Matcher,
    NewSubscription,
    Signing,
    Subscription,
    Subscriptions,
    check,
    matches,
)
from services.task_agent.handlers import NonRetryableError
from services.task_agent.http_builtins import _open_sealed

URL = "https://hooks.example.com/agentry?tenant=7"
SECRET = "whsec_0123456789abcdef"
KEYRING = Keyring({"k1": bytes(range(32))}, "k1")


# Validation


def test_a_valid_subscription_is_taken_with_its_event_types_once_each() -> None:
    new = check(URL, ["task.dead_lettered", "run.*", "task.dead_lettered"], SECRET)

    assert new.url == URL
    assert new.event_types == ("task.dead_lettered", "run.*")
    assert SECRET not in repr(new)


@pytest.mark.parametrize(
    ("url", "event_types", "secret", "field"),
    [
        ("", ["*"], SECRET, "url is required"),
        ("ftp://example.com/x", ["*"], SECRET, "url must be an http or https URL"),
        ("example.com/hook", ["*"], SECRET, "url must be an http or https URL"),
        ("https:///path", ["*"], SECRET, "url has no host"),
        ("https://example.com:99999/", ["*"], SECRET, "url is not a valid URL"),
        ("https://example.com/a b", ["*"], SECRET, "url may not contain spaces"),
        ("https://example.com/\x00", ["*"], SECRET, "url may not contain spaces"),
        ("https://example.com/" + "a" * 2048, ["*"], SECRET, "url is longer than 2048"),
        (URL, [], SECRET, "event_types is required"),
        (URL, ["task.*"] * 21, SECRET, "event_types holds more than 20"),
        (URL, ["task*"], SECRET, "event_types: 'task*' is not an event type"),
        (URL, ["*.failed"], SECRET, "is not an event type"),
        (URL, ["task..failed"], SECRET, "is not an event type"),
        (URL, [""], SECRET, "is not an event type"),
        (URL, ["a" * 129], SECRET, "is not an event type"),
        (URL, ["*"], "short", "secret must be 16 to 256 characters"),
        (URL, ["*"], "s" * 257, "secret must be 16 to 256 characters"),
        (URL, ["*"], "whsec_0123456789\nabcdef", "secret may not contain control"),
    ],
)
def test_an_invalid_subscription_is_refused_naming_the_field(
    url: str, event_types: list[str], secret: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(field)) as refused:
        check(url, event_types, secret)
    assert secret not in str(refused.value)


# Matching


@pytest.mark.parametrize(
    ("pattern", "event_type", "wanted"),
    [
        ("*", "task.succeeded", True),
        ("*", "orders.paid", True),
        ("task.dead_lettered", "task.dead_lettered", True),
        ("task.dead_lettered", "task.failed", False),
        ("task.*", "task.failed", True),
        ("task.*", "task", False),
        ("task.*", "tasks.failed", False),
        ("run.*", "run.step.failed", True),
        ("run.failed", "run.failed.again", False),
    ],
)
def test_patterns_match_exact_types_prefixes_and_everything(
    pattern: str, event_type: str, wanted: bool
) -> None:
    assert matches(pattern, event_type) is wanted


def _subscription(*event_types: str, url: str = URL) -> Subscription:
    return Subscription(uuid.uuid4(), url, event_types, datetime.now(UTC), "test-admin")


def test_a_subscription_several_of_whose_patterns_match_is_named_once() -> None:
    both = _subscription("task.*", "task.failed", "*")
    runs = _subscription("run.*")
    matcher = Matcher([both, runs])

    assert matcher.wanting("task.failed") == [both]
    assert matcher.wanting("run.failed") == [both, runs]
    assert matcher.wanting("task.failed") == [both], "the same answer when remembered"


# Creating and deleting


class MemoryStore:
    """The store's contract, in memory: enough for the rules the domain adds."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, tuple[Subscription, str]] = {}

    async def add(self, new: NewSubscription, created_by: str, limit: int) -> Subscription | None:
        if len(self.rows) >= limit:
            return None
        created = Subscription(
            uuid.uuid4(), new.url, new.event_types, datetime.now(UTC), created_by
        )
        self.rows[created.id] = (created, new.secret)
        return created

    async def all(self) -> list[Subscription]:
        return [s for s, _ in self.rows.values()]

    async def delete(self, subscription_id: uuid.UUID) -> bool:
        return self.rows.pop(subscription_id, None) is not None

    async def signing(self) -> list[Signing]:
        return [Signing(s, secret) for s, secret in self.rows.values()]


async def test_creating_past_the_limit_is_refused_and_every_change_is_told() -> None:
    changes = []
    subscriptions = Subscriptions(MemoryStore(), 2, lambda: changes.append(1))

    first = await subscriptions.create(URL, ["*"], SECRET, "test-admin")
    await subscriptions.create(URL, ["task.*"], SECRET, "test-admin")
    with pytest.raises(FailedPrecondition, match="2 webhook subscriptions already"):
        await subscriptions.create(URL, ["run.*"], SECRET, "test-admin")
    await subscriptions.delete(str(first.id))

    assert first.created_by == "test-admin"
    assert [s.event_types for s in await subscriptions.list()] == [("task.*",)]
    assert len(changes) == 3
    with pytest.raises(NotFound):
        await subscriptions.delete(str(first.id))
    with pytest.raises(InvalidArgument, match="subscription_id"):
        await subscriptions.delete("not-an-id")


# Deliveries


class Submitted:
    """TaskService's SubmitTasks as the deliveries see it; refuses specs `refuse` names."""

    def __init__(self, refuse: Any = lambda spec: False) -> None:
        self.specs: list[tasks_pb2.TaskSpec] = []
        self.calls = 0
        self._refuse = refuse

    async def submit(self, specs: Sequence[tasks_pb2.TaskSpec]) -> list[uuid.UUID]:
        self.calls += 1
        if any(self._refuse(s) for s in specs):
            raise InvalidArgument("payload is over the limit")
        self.specs += specs
        return [uuid.uuid4() for _ in specs]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _deliveries(
    store: MemoryStore, submitted: Submitted, clock: Clock | None = None
) -> WebhookDeliveries:
    return WebhookDeliveries(
        store, submitted, KEYRING, DeliveryRetry(5, 0.5, 30.0), 5.0, clock or Clock()
    )


async def _subscribe(store: MemoryStore, *event_types: str, url: str = URL) -> Subscription:
    created = await store.add(NewSubscription(url, event_types, SECRET), "test-admin", 100)
    assert created is not None
    return created


def _task_event(type_: str, task_type: str = "fail") -> events_pb2.Event:
    data = {"id": str(uuid.uuid4()), "type": task_type, "reason": "non_retryable"}
    return make_event(type_, f"task/{data['id']}", data, "task_agent/test")


async def test_each_wanted_event_becomes_one_signed_delivery_per_subscription() -> None:
    store, submitted = MemoryStore(), Submitted()
    dead = await _subscribe(store, "task.dead_lettered")
    everything = await _subscribe(store, "*", url="https://other.example.com/in")
    deliveries = _deliveries(store, submitted)
    wanted, other = _task_event("task.dead_lettered"), _task_event("task.succeeded")

    count = await deliveries.deliver([wanted, other])

    assert count == 3
    by_key = {s.idempotency_key: s for s in submitted.specs}
    assert set(by_key) == {
        f"hook:{dead.id}:{wanted.id}",
        f"hook:{everything.id}:{wanted.id}",
        f"hook:{everything.id}:{other.id}",
    }
    spec = by_key[f"hook:{dead.id}:{wanted.id}"]
    assert spec.type == "webhook.deliver"
    assert spec.labels == {"webhook_subscription": str(dead.id), "event": wanted.id}
    assert (spec.retry.max_attempts, spec.retry.initial_backoff_s) == (5, 0.5)
    payload = json.loads(spec.payload)
    assert payload["url"] == URL
    assert payload["event"] == "task.dead_lettered"
    assert payload["subscription"] == str(dead.id)
    assert payload["body"] == {
        "id": wanted.id,
        "type": "task.dead_lettered",
        "subject": wanted.subject,
        "time": wanted.time.ToJsonString(),
        "data": json.loads(wanted.data),
        "source": "task_agent/test",
    }
    assert SECRET not in spec.payload.decode()
    assert "secret_ref" not in payload


async def test_the_sealed_secret_opens_for_its_own_delivery_only() -> None:
    store, submitted = MemoryStore(), Submitted()
    subscription = await _subscribe(store, "*")
    await _deliveries(store, submitted).deliver([_task_event("task.failed")])
    [spec] = submitted.specs
    payload = json.loads(spec.payload)
    body = canonical_json(payload["body"])
    sealed, sid = payload["secret_sealed"], payload["subscription"]

    assert _open_sealed(sealed, sid, KEYRING, URL, body) == SECRET
    for args in [
        (sealed, sid, KEYRING, "https://attacker.example.com/", body),
        (sealed, sid, KEYRING, URL, body.replace(b"task.failed", b"task.succeeded")),
        (sealed, str(uuid.uuid4()), KEYRING, URL, body),
        (sealed, sid, Keyring({"k1": bytes(32)}, "k1"), URL, body),
    ]:
        with pytest.raises(NonRetryableError, match="does not open") as refused:
            _open_sealed(*args)
        assert SECRET not in str(refused.value)
    assert str(subscription.id) == sid


@pytest.mark.parametrize(
    ("sealed", "subscription", "message"),
    [
        (base64.b64encode(SECRET.encode()).decode(), None, "a subscription id"),
        (base64.b64encode(SECRET.encode()).decode(), "x", "a subscription id"),
        (base64.b64encode(SECRET.encode()).decode(), str(uuid.uuid4()), "not sealed with"),
        ("%%%", str(uuid.uuid4()), "not base64"),
        (17, str(uuid.uuid4()), "must be base64 text"),
    ],
    ids=["no subscription", "bad subscription", "a secret in clear", "not base64", "no text"],
)
def test_a_secret_not_sealed_by_the_orchestrator_is_refused(
    sealed: Any, subscription: Any, message: str
) -> None:
    with pytest.raises(NonRetryableError, match=message):
        _open_sealed(sealed, subscription, KEYRING, URL, b"{}")


async def test_a_deliverys_own_events_are_never_delivered() -> None:
    store, submitted = MemoryStore(), Submitted()
    await _subscribe(store, "task.*")
    deliveries = _deliveries(store, submitted)

    count = await deliveries.deliver(
        [
            _task_event("task.started", task_type="webhook.deliver"),
            _task_event("task.dead_lettered", task_type="webhook.deliver"),
        ]
    )

    assert count == 0
    assert submitted.calls == 0


async def test_subscriptions_are_read_again_when_changed_or_after_the_refresh() -> None:
    store, submitted, clock = MemoryStore(), Submitted(), Clock()
    deliveries = _deliveries(store, submitted, clock)
    assert await deliveries.deliver([_task_event("task.failed")]) == 0

    await _subscribe(store, "*")
    assert await deliveries.deliver([_task_event("task.failed")]) == 0, "not read yet"
    clock.now = 5.0
    assert await deliveries.deliver([_task_event("task.failed")]) == 1

    store.rows.clear()
    deliveries.changed()
    assert await deliveries.deliver([_task_event("task.failed")]) == 0


async def test_a_delivery_task_service_refuses_does_not_hold_back_the_others() -> None:
    store = MemoryStore()
    await _subscribe(store, "*")
    fine, big = _task_event("task.failed"), _task_event("task.failed")
    submitted = Submitted(refuse=lambda spec: spec.labels["event"] == big.id)

    await _deliveries(store, submitted).deliver([fine, big])

    assert [s.labels["event"] for s in submitted.specs] == [fine.id]
    assert submitted.calls == 3, "the batch, then one by one"
