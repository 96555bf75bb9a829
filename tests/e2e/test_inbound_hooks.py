"""Inbound webhooks on the real processes: a second gateway configured with hooks, called as
a sender would call it. A signed delivery starts its workflow (on the gateway's own
authority) or publishes its event; a forged, stale or replayed one is refused and audited."""

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import psycopg
import pytest
import redis

from agentry.events.v1 import events_pb2
from dev.embedded import free_port
from dev.stack import Stack
from libs.common.redis_client import Keys
from libs.common.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

PROBLEM = "application/problem+json"
ECHO = {"steps": [{"name": "one", "type": "echo", "input": {"got": {"$ref": "input"}}}]}


@dataclass(frozen=True)
class HookGateway:
    url: str
    prefix: str
    instance: str
    # hook name -> its secret, and -> the workflow it starts
    secrets: dict[str, str]
    workflows: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)


@pytest.fixture(scope="module")
def hooks(platform, database_url: str, redis_url: str) -> Iterator[HookGateway]:
    tag = uuid.uuid4().hex[:6]
    workflows = {"deploys": f"deploys-{tag}", "guarded": f"guarded-{tag}"}
    with platform.client("admin") as admin:
        for workflow in workflows.values():
            reply = admin.put(f"/v1/workflows/{workflow}", json=ECHO)
            assert reply.status_code == 201, reply.text
    hook_secrets = {name: f"whsec_{secrets.token_hex(16)}" for name in ("deploys", "payments")}
    hook_secrets["guarded"] = hook_secrets["deploys"]
    config = {
        "deploys": {"secret": "deploys", "workflow": workflows["deploys"]},
        # Shares the deploys hook's secret: a delivery to one is not one to the other.
        "guarded": {"secret": "deploys", "workflow": workflows["guarded"]},
        "payments": {"secret": "payments", "event": "hook.payments"},
    }
    prefix = f"e2e-hooks-{tag}"
    instance = f"hooks-{tag}"
    stack = Stack(
        database_url,
        redis_url,
        replace(platform.stack.ports, gateway=free_port()),
        platform.stack.secrets,
        env={
            "AGENTRY_REDIS_PREFIX": prefix,
            "AGENTRY_INSTANCE": instance,
            "AGENTRY_JWT_AUDIENCE": "agentry-gateway",
            "AGENTRY_LOG_FORMAT": "json",
            "AGENTRY_MIGRATE_ON_START": "false",
            "AGENTRY_INBOUND_HOOKS": json.dumps(config),
            "AGENTRY_HOOK_SECRETS": json.dumps(
                {"deploys": hook_secrets["deploys"], "payments": hook_secrets["payments"]}
            ),
        },
        log_dir=platform.log_dir / "hooks-gateway",
    )
    try:
        stack.start_service("gateway")
        stack.wait_ready()
        yield HookGateway(stack.gateway_url, prefix, instance, hook_secrets, workflows)
    finally:
        codes = stack.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    assert codes == {"gateway": 0}, f"unclean exit; logs in {platform.log_dir}"


def _trace() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
    }


def _audit_rows(database_url: str, trace_id: str) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT principal, role, action, resource, outcome, via FROM audit.entries"
            " WHERE trace_id = %s ORDER BY id",
            [trace_id],
        )
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _runs(platform, workflow: str) -> list[dict]:
    with platform.client("admin") as admin:
        return admin.get("/v1/runs", params={"workflow": workflow}).json()["items"]


def _until_ended(platform, run_id: str, within: float = 60.0) -> dict:
    deadline = time.monotonic() + within
    with platform.client("admin") as admin:
        while (run := admin.get(f"/v1/runs/{run_id}").json())["state"] == "RUNNING":
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
    return run


def test_a_signed_delivery_starts_its_workflow_and_a_replay_is_refused(
    platform, hooks: HookGateway, database_url: str
) -> None:
    body = json.dumps({"deploy": "v1.2.3", "by": "ci"}).encode()
    headers = _signed(hooks.secrets["deploys"], body)
    trace_id, traceparent = _trace()
    with hooks.client() as client:
        accepted = client.post(
            "/v1/hooks/deploys", content=body, headers={**headers, "traceparent": traceparent}
        )
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        run = _until_ended(platform, run_id)
        assert run["state"] == "SUCCEEDED", run
        assert run["steps"][0]["output"] == {"got": {"deploy": "v1.2.3", "by": "ci"}}

        replay_trace, replay_parent = _trace()
        replayed = client.post(
            "/v1/hooks/deploys", content=body, headers={**headers, "traceparent": replay_parent}
        )
        assert replayed.status_code == 409
        assert replayed.headers["content-type"].startswith(PROBLEM)
    assert [r["id"] for r in _runs(platform, hooks.workflows["deploys"])] == [run_id]
    rows = _audit_rows(database_url, trace_id)
    [hook_row] = [r for r in rows if r["action"] == "POST /v1/hooks/{name}"]
    [start_row] = [r for r in rows if r["action"].endswith("WorkflowService/StartRun")]
    assert hook_row == {
        "principal": "hook:deploys",
        "role": "hook",
        "action": "POST /v1/hooks/{name}",
        "resource": f"run_id={run_id}",
        "outcome": "OK",
        "via": "gateway",
    }
    # The orchestrator saw the gateway itself start the run: there is no person behind it.
    assert start_row["principal"] == "gateway"
    assert start_row["role"] == "gateway"
    assert start_row["outcome"] == "OK"
    [refused] = _audit_rows(database_url, replay_trace)
    assert (refused["principal"], refused["outcome"]) == ("hook:deploys", "ALREADY_EXISTS")


def test_a_forged_signature_is_401_and_starts_nothing(
    platform, hooks: HookGateway, database_url: str
) -> None:
    body = b'{"deploy":"evil"}'
    trace_id, traceparent = _trace()
    with hooks.client() as client:
        forged = client.post(
            "/v1/hooks/guarded",
            content=body,
            headers={**_signed("not the secret", body), "traceparent": traceparent},
        )
        assert forged.status_code == 401
        assert forged.headers["content-type"].startswith(PROBLEM)
        unsigned = client.post(
            "/v1/hooks/guarded", content=body, headers={"Content-Type": "application/json"}
        )
        assert unsigned.status_code == 401
        # A genuine signature over another body does not cover this one.
        other = _signed(hooks.secrets["guarded"], b'{"deploy":"v1"}')
        assert client.post("/v1/hooks/guarded", content=body, headers=other).status_code == 401
    assert _runs(platform, hooks.workflows["guarded"]) == []
    [row] = _audit_rows(database_url, trace_id)
    assert (row["principal"], row["outcome"]) == ("hook:guarded", "UNAUTHENTICATED")


def test_a_stale_delivery_is_refused(platform, hooks: HookGateway) -> None:
    body = b'{"deploy":"old"}'
    secret = hooks.secrets["guarded"]
    with hooks.client() as client:
        for age in (301, -301, 3600):
            headers = _signed(secret, body, int(time.time()) - age)
            refused = client.post("/v1/hooks/guarded", content=body, headers=headers)
            assert refused.status_code == 401, age
            assert "stale" in refused.json()["detail"]
    assert _runs(platform, hooks.workflows["guarded"]) == []


def test_an_event_hook_publishes_its_event_on_the_stream(
    hooks: HookGateway, redis_url: str
) -> None:
    body = json.dumps({"payment": "pi_1", "amount": 4200}).encode()
    with hooks.client() as client:
        accepted = client.post(
            "/v1/hooks/payments", content=body, headers=_signed(hooks.secrets["payments"], body)
        )
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(Keys(hooks.prefix).event_stream())
    finally:
        client.close()
    published = [
        event
        for _, fields in entries
        for event in events_pb2.EventBatch.FromString(fields[b"e"]).events
        if event.id == event_id
    ]
    assert len(published) == 1
    [event] = published
    assert (event.type, event.subject) == ("hook.payments", "hook/payments")
    assert event.source == f"gateway/{hooks.instance}"
    assert json.loads(event.data) == {"payment": "pi_1", "amount": 4200}


def test_an_unknown_hook_is_404_and_a_body_not_json_is_400(hooks: HookGateway) -> None:
    with hooks.client() as client:
        body = b'{"a":1}'
        missing = client.post(
            "/v1/hooks/nobody", content=body, headers=_signed(hooks.secrets["payments"], body)
        )
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith(PROBLEM)
        text = b"payment=pi_1"
        not_json = client.post(
            "/v1/hooks/payments", content=text, headers=_signed(hooks.secrets["payments"], text)
        )
        assert not_json.status_code == 400
