"""Outbound webhooks on the real processes: an admin subscribes a receiver on this machine
to an event type, the event happens, and the receiver gets it signed with the
subscription's secret; one that keeps failing is retried, then ends in the dead letters.
(The platform's task agent may call this machine and retries deliveries quickly: see
conftest.)"""

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from libs.common.crypto import MAGIC
from libs.common.webhooks import verify

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


class Receiver:
    """A webhook receiver: on path "/flaky" each delivery (by its webhook id) fails twice
    with 500, then is accepted; on "/down" every attempt fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Delivery] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            tries = sum(
                1
                for d in self._received
                if d.headers["agentry-webhook-id"] == headers.get("agentry-webhook-id")
            )
            status = 200 if path == "/flaky" and tries >= 2 else 500
            self._received.append(Delivery(path, headers, body, status))
            return status

    def received(self, about: Callable[[Delivery], bool]) -> list[Delivery]:
        with self._lock:
            return [d for d in self._received if about(d)]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(receiver.answer(self.path, headers, body))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    thread = threading.Thread(target=receiving.server.serve_forever, daemon=True)
    thread.start()
    yield receiving
    receiving.server.shutdown()
    receiving.server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def subscribe(platform) -> Iterator[Callable[..., dict[str, Any]]]:
    """Creates subscriptions as an admin; deletes those still there at the end."""
    created: list[str] = []

    def make(url: str, event_types: list[str], secret: str) -> dict[str, Any]:
        with platform.client("admin") as admin:
            reply = admin.post(
                "/v1/webhook-subscriptions",
                json={"url": url, "event_types": event_types, "secret": secret},
            )
        assert reply.status_code == 201, reply.text[:300]
        created.append(reply.json()["id"])
        return dict(reply.json())

    yield make
    with platform.client("admin") as admin:
        for subscription_id in created:
            admin.delete(f"/v1/webhook-subscriptions/{subscription_id}")


def _until(check: Callable[[], Any], within_s: float = 30.0) -> Any:
    deadline = time.monotonic() + within_s
    while not (found := check()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)
    return found


def _dead_lettered_task(client: httpx.Client) -> str:
    """A task that fails for good at once: a `task.dead_lettered` event."""
    reply = client.post(
        "/v1/tasks",
        json={"type": "fail", "payload": {"times": 1, "retryable": False, "message": "no"}},
    )
    assert reply.status_code == 201, reply.text[:300]
    return str(reply.json()["id"])


def test_a_subscribed_event_reaches_the_receiver_signed_once_it_recovers(
    platform, receiver, subscribe
) -> None:
    secret = secrets.token_urlsafe(24)
    subscription = subscribe(receiver.url("/flaky"), ["task.dead_lettered"], secret)
    assert subscription["secret_set"] is True
    assert subscription["created_by"] == "test-admin"
    assert secret not in json.dumps(subscription)

    with platform.client("operator") as operator:
        task_id = _dead_lettered_task(operator)

    def about_it(d: Delivery) -> bool:
        return d.path == "/flaky" and (d.event["data"] or {}).get("id") == task_id

    _until(lambda: any(d.status == 200 for d in receiver.received(about_it)))
    attempts = receiver.received(about_it)
    assert [d.status for d in attempts] == [500, 500, 200]
    assert len({d.headers["agentry-webhook-id"] for d in attempts}) == 1
    for delivery in attempts:
        h = delivery.headers
        assert verify(
            secret, h["agentry-webhook-timestamp"], delivery.body, h["agentry-webhook-signature"]
        )
        assert not verify(
            "another secret of ours",
            h["agentry-webhook-timestamp"],
            delivery.body,
            h["agentry-webhook-signature"],
        )
        assert h["agentry-webhook-event"] == "task.dead_lettered"
    event = attempts[-1].event
    assert event["type"] == "task.dead_lettered"
    assert event["subject"] == f"task/{task_id}"
    assert event["data"]["type"] == "fail"
    assert event["data"]["reason"] == "non_retryable"

    # The delivery is a task like any other, which people who read tasks may read: they see
    # the secret sealed, never the secret.
    with platform.client("viewer") as viewer:
        delivery_task = viewer.get(f"/v1/tasks/{attempts[-1].headers['agentry-webhook-id']}")
    assert delivery_task.status_code == 200
    shown = delivery_task.json()
    assert (shown["type"], shown["state"], shown["attempts"]) == ("webhook.deliver", "SUCCEEDED", 3)
    assert shown["labels"]["webhook_subscription"] == subscription["id"]
    assert shown["payload"]["secret_sealed"]
    assert secret not in delivery_task.text


def test_a_delivery_the_receiver_keeps_refusing_ends_in_the_dead_letters(
    platform, receiver, subscribe
) -> None:
    # Every task event: the delivery's own dead letter must not come back as a delivery.
    subscription = subscribe(receiver.url("/down"), ["task.*"], secrets.token_urlsafe(24))

    with platform.client("operator") as operator:
        task_id = _dead_lettered_task(operator)

    def dead_delivery() -> dict[str, Any] | None:
        with platform.client("viewer") as viewer:
            page = viewer.get(
                "/v1/dead-letters", params={"type": "webhook.deliver", "page_size": 500}
            ).json()
        for letter in page["items"]:
            task = letter["task"]
            if (
                task["labels"].get("webhook_subscription") == subscription["id"]
                and task["payload"]["body"]["type"] == "task.dead_lettered"
                and task["payload"]["body"]["data"]["id"] == task_id
            ):
                return dict(letter)
        return None

    letter = _until(dead_delivery)
    assert letter["reason"] == "retries_exhausted"
    assert letter["task"]["attempts"] == 5
    assert "HTTP 500" in letter["task"]["error"]["message"]
    webhook_id = letter["task"]["id"]
    attempts = receiver.received(lambda d: d.headers["agentry-webhook-id"] == webhook_id)
    assert [d.status for d in attempts] == [500] * 5

    # The deliveries' own events (started, retrying, dead-lettered...) were not delivered.
    time.sleep(1.0)
    delivered = receiver.received(lambda d: d.path == "/down")
    assert delivered
    assert all((d.event["data"] or {}).get("type") != "webhook.deliver" for d in delivered)


def test_subscriptions_are_listed_without_secrets_and_deleted_by_admins(
    platform, receiver, subscribe, database_url
) -> None:
    secret = secrets.token_urlsafe(24)
    subscription = subscribe(receiver.url("/flaky"), ["run.*", "run.failed"], secret)
    with psycopg.connect(database_url) as conn:
        [stored] = conn.execute(
            "SELECT secret FROM orchestrator.webhook_subscriptions WHERE id = %s",
            [subscription["id"]],
        ).fetchone()
    assert bytes(stored).startswith(MAGIC)
    assert secret.encode() not in bytes(stored)

    with platform.client("admin") as admin:
        listed = admin.get("/v1/webhook-subscriptions")
        assert listed.status_code == 200
        assert listed.json()["next_page_token"] is None
        [mine] = [s for s in listed.json()["items"] if s["id"] == subscription["id"]]
        assert mine == subscription
        assert mine["event_types"] == ["run.*", "run.failed"]
        assert secret not in listed.text

        refused = admin.post(
            "/v1/webhook-subscriptions",
            json={"url": "ftp://example.com/in", "event_types": ["*"], "secret": secret},
        )
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith(PROBLEM)
        assert "url must be an http or https URL" in refused.json()["detail"]
        assert secret not in refused.text

        with platform.client("operator") as operator:
            assert operator.get("/v1/webhook-subscriptions").status_code == 403
            assert (
                operator.delete(f"/v1/webhook-subscriptions/{subscription['id']}").status_code
                == 403
            )

        assert admin.delete(f"/v1/webhook-subscriptions/{subscription['id']}").status_code == 204
        gone = admin.delete(f"/v1/webhook-subscriptions/{subscription['id']}")
        assert gone.status_code == 404
        assert subscription["id"] not in admin.get("/v1/webhook-subscriptions").text
    service = "agentry.workflows.v1.WebhookSubscriptionService"
    with psycopg.connect(database_url) as conn:
        audited = conn.execute(
            "SELECT action, principal, outcome, via FROM audit.entries"
            " WHERE resource LIKE %s ORDER BY id",
            [f"%={subscription['id']}"],
        ).fetchall()
    assert audited == [
        (f"{service}/CreateSubscription", "test-admin", "OK", "gateway"),
        (f"{service}/DeleteSubscription", "test-admin", "OK", "gateway"),
    ]
