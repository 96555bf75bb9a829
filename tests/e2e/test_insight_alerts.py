"""Alerts through the real processes: an alert subscription is a webhook subscription to
`insight.opened`. Task events with a quiet history, then a failure burst, reach the analysis
service; it opens the incident's insights and the orchestrator delivers one signed webhook
for the incident, however many rounds see it and however many insights it has; the quiet
type beside it alerts nobody."""

import asyncio
import json
import math
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys, create_redis
from libs.common.webhooks import verify
from tests.conftest import create_database, drop_database
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.test_webhook_subscriptions import Delivery, Receiver

CHARGE, MAIL = "e2e.charge", "e2e.mail"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def alerting(
    server_urls: tuple[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Platform, str]]:
    """A platform of its own (its own database: no other analysis service may take its
    insight rounds) whose analysis service looks for insights twice a second."""
    database_url = create_database(server_urls[0])
    prefix = f"e2e-alerts-{uuid.uuid4().hex[:8]}"
    try:
        with running_platform(
            database_url,
            redis_url,
            tmp_path_factory.mktemp("alert-logs"),
            AGENTRY_REDIS_PREFIX=prefix,
            AGENTRY_INSIGHT_INTERVAL_S="0.5",
        ) as platform:
            yield platform, prefix
    finally:
        drop_database(server_urls[0], database_url)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    thread = threading.Thread(target=receiving.server.serve_forever, daemon=True)
    thread.start()
    yield receiving
    receiving.server.shutdown()
    receiving.server.server_close()
    thread.join(timeout=5)


def _minute(type_: str, minute: float, ok: int, failed: list[str]) -> list[tuple[Any, ...]]:
    """A minute of a type's tasks as the task agent announces them."""
    items: list[tuple[Any, ...]] = []
    outcomes = [("task.succeeded", None)] * ok + [("task.retrying", m) for m in failed]
    for n, (event, error) in enumerate(outcomes):
        start = minute + 1 + 50 * n / len(outcomes)
        data = {
            "id": f"{type_}-{minute}-{n}",
            "type": type_,
            "queue": "default",
            "version": "1.0",
            "agent": f"task_agent/{n % 3}",
            "error": error,
            "run_at": start - 0.2,
            "started_at": start,
            "finished_at": start + 0.3 * (1 + 0.3 * math.sin(n + minute)),
        }
        items.append(("task.started", f"task/{data['id']}", data, start))
        items.append((event, f"task/{data['id']}", data, data["finished_at"]))
    return items


def _publish(redis_url: str, prefix: str, items: list[tuple[Any, ...]]) -> None:
    async def publish() -> None:
        client = create_redis(redis_url)
        bus = EventBus(client, Keys(prefix), source="task_agent/e2e")
        try:
            events = make_events([(e, s, d) for e, s, d, _ in items], bus.source)
            for event, (*_, at) in zip(events, items, strict=True):
                event.time.FromNanoseconds(int(at * 1e9))
            await bus.publish_events(events)
        finally:
            await client.aclose()

    asyncio.run(publish())


def _until(check: Callable[[], Any], within_s: float = 60.0) -> Any:
    deadline = time.monotonic() + within_s
    while not (found := check()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)
    return found


def test_one_incident_is_one_signed_alert(alerting, receiver, redis_url) -> None:
    platform, prefix = alerting
    secret = secrets.token_urlsafe(24)
    with platform.client("admin") as admin:
        reply = admin.post(
            "/v1/webhook-subscriptions",
            json={
                "url": receiver.url("/flaky"),
                "event_types": ["insight.opened"],
                "secret": secret,
            },
        )
    assert reply.status_code == 201, reply.text

    now = time.time()
    first = now - now % 60 - 80 * 60
    quiet: list[tuple[Any, ...]] = []
    for m in range(76):
        quiet += _minute(CHARGE, first + 60 * m, 20, ["timeout after 30s"] if m % 4 == 0 else [])
        quiet += _minute(MAIL, first + 60 * m, 10, [])
    _publish(redis_url, prefix, quiet)

    def charges_folded(at_least: int) -> Callable[[], bool]:
        def check() -> bool:
            with platform.client("viewer") as viewer:
                rows = viewer.get("/v1/reports", params={"window": 6000}).json()["rows"]
            return sum(r["total"] for r in rows if r["group"] == CHARGE) >= at_least

        return check

    _until(charges_folded(76 * 20))

    # The last four minutes: half the charges fail, with an error never seen before.
    burst: list[tuple[Any, ...]] = []
    for m in range(76, 80):
        declined = [f"card declined for order {m}{n}" for n in range(12)]
        burst += _minute(CHARGE, first + 60 * m, 12, declined)
        burst += _minute(MAIL, first + 60 * m, 10, [])
    _publish(redis_url, prefix, burst)

    def opened() -> list[dict[str, Any]]:
        with platform.client("viewer") as viewer:
            page = viewer.get("/v1/insights", params={"subject": CHARGE, "state": "open"})
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items if len(items) == 2 else []

    insights = _until(opened)
    assert sorted(i["kind"] for i in insights) == [
        "anomaly.failure_rate",
        "pattern.new_fingerprint",
    ]
    failing = next(i for i in insights if i["kind"] == "anomaly.failure_rate")
    assert failing["severity"] == "critical" and failing["evidence"]["value"] == 0.5

    def alerts(d: Delivery) -> bool:
        return d.path == "/flaky" and d.event["type"] == "insight.opened"

    _until(lambda: any(d.status == 200 for d in receiver.received(alerts)))
    # Later rounds see the incident still (one more minute's worth of failures changes its
    # evidence), and still one alert.
    extra = [f"card declined for order 99{n}" for n in range(12)]
    _publish(redis_url, prefix, _minute(CHARGE, first + 60 * 79, 0, extra))

    def updated() -> bool:
        for insight in opened():
            if insight["kind"] == "anomaly.failure_rate":
                return bool(insight["evidence"] != failing["evidence"])
        return False

    _until(updated)
    deliveries = receiver.received(alerts)
    assert len({d.headers["agentry-webhook-id"] for d in deliveries}) == 1
    delivered = next(d for d in deliveries if d.status == 200)
    h = delivered.headers
    assert verify(
        secret, h["agentry-webhook-timestamp"], delivered.body, h["agentry-webhook-signature"]
    )
    # The alert names the incident's first insight: the failure rate's when a round finds
    # both at once (the worse first), the new fingerprint's when a round saw it alone first.
    assert delivered.event["data"]["id"] in {i["id"] for i in insights}
    assert delivered.event["data"]["subject"] == CHARGE
    # The quiet type beside it: no insight, no alert.
    with platform.client("viewer") as viewer:
        assert viewer.get("/v1/insights", params={"subject": MAIL}).json()["items"] == []
        for bad, says in (({"window": 0}, "window"), ({"page_token": "nope"}, "page_token")):
            refused = viewer.get("/v1/insights", params=bad)
            assert refused.status_code in (400, 422), refused.text
            assert says in refused.text
    assert json.loads(delivered.body)["type"] == "insight.opened"

    # And from the command line.
    shown = json.loads(_agentry(platform, "insights", "--subject", CHARGE, "--json"))
    assert {i["id"] for i in shown["items"]} == {i["id"] for i in insights}
    table = _agentry(platform, "insights", "--state", "open").splitlines()
    assert table[0].split()[:3] == ["OPENED", "STATE", "SEVERITY"]
    rows = [line for line in table[1:] if "anomaly.failure_rate" in line]
    assert len(rows) == 1 and CHARGE in rows[0] and "(expected 0.0" in rows[0]


def _agentry(platform: Platform, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={
            "PYTHONPATH": f"{ROOT}:{ROOT / 'libs/protos'}",
            "AGENTRY_URL": platform.stack.gateway_url,
            "AGENTRY_TOKEN": platform.token("viewer"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    return done.stdout
