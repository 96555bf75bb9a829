"""The gateway's rate limit per principal, shared by every replica through Redis, and the
Idempotency-Key header on the POSTs that create tasks."""

import uuid
from collections.abc import Iterator

import httpx
import pytest

from dev.embedded import free_port
from dev.stack import Ports, Stack
from libs.common.tokens import mint
from tests.secure import AUDIENCE, dev_secrets

PROBLEM = "application/problem+json"
# One token per 10 s after the burst: nothing refills while a test runs.
RATE_PER_S = 0.1
BURST = 5


@pytest.fixture(scope="module")
def replicas(platform, database_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two more gateways in front of the platform's services, with a low limit of their own
    (the platform's gateway, which other tests share, keeps the default) and one Redis
    prefix between them, as replicas of one deployment have."""
    prefix = f"e2e-limits-{uuid.uuid4().hex[:8]}"
    stacks = [
        Stack(
            database_url,
            redis_url,
            Ports(
                task_agent=platform.stack.ports.task_agent,
                orchestrator=platform.stack.ports.orchestrator,
                analysis=platform.stack.ports.analysis,
                gateway=free_port(),
            ),
            dev_secrets(),
            env={
                "AGENTRY_REDIS_PREFIX": prefix,
                "AGENTRY_INSTANCE": f"{prefix}-{replica}",
                "AGENTRY_JWT_AUDIENCE": AUDIENCE,
                "AGENTRY_LOG_FORMAT": "json",
                "AGENTRY_MIGRATE_ON_START": "false",
                "AGENTRY_RATE_LIMIT_PER_S": str(RATE_PER_S),
                "AGENTRY_RATE_LIMIT_BURST": str(BURST),
            },
            log_dir=platform.log_dir / f"limited-gateway-{replica}",
        )
        for replica in ("a", "b")
    ]
    try:
        for stack in stacks:
            stack.start_service("gateway")
        for stack in stacks:
            stack.wait_ready()
        yield stacks[0].gateway_url, stacks[1].gateway_url
    finally:
        codes = [stack.stop() for stack in stacks]
    assert codes == [{"gateway": 0}, {"gateway": 0}], codes


def _client(url: str, subject: str, role: str = "viewer") -> httpx.Client:
    """A client acting as a principal of its own, so no other test spends its tokens."""
    token = mint(dev_secrets().jwt_private_key.read_bytes(), subject, role, AUDIENCE, 600)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)


def _subject() -> str:
    return f"limits-{uuid.uuid4().hex[:8]}"


def test_a_principal_over_its_limit_is_told_when_to_come_back(replicas) -> None:
    url, _ = replicas
    with _client(url, _subject()) as greedy, _client(url, _subject()) as other:
        for _ in range(BURST):
            assert greedy.get("/v1/task-types").status_code == 200
        refused = greedy.get("/v1/task-types")
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith(PROBLEM)
        assert 1 <= int(refused.headers["retry-after"]) <= 1 / RATE_PER_S
        body = refused.json()
        assert body["status"] == 429
        assert body["title"] == "Too Many Requests"
        assert "rate limit" in body["detail"]
        # Every route draws on the one bucket; a refusal takes no token, so retrying early
        # does not push the wait further out.
        again = greedy.get("/v1/queues")
        assert again.status_code == 429
        assert int(again.headers["retry-after"]) <= int(refused.headers["retry-after"])

        # Other principals have buckets of their own; health and the schema are not limited.
        assert other.get("/v1/task-types").status_code == 200
        assert greedy.get("/healthz").status_code == 200
        assert greedy.get("/readyz").status_code == 200
        assert greedy.get("/openapi.json").status_code == 200


def test_replicas_share_one_bucket_per_principal(replicas) -> None:
    subject = _subject()
    with _client(replicas[0], subject) as via_a, _client(replicas[1], subject) as via_b:
        for n in range(BURST):
            client = via_a if n % 2 else via_b
            assert client.get("/v1/task-types").status_code == 200
        assert via_a.get("/v1/task-types").status_code == 429
        assert via_b.get("/v1/task-types").status_code == 429


def test_a_replayed_submission_answers_the_first_task(platform) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    body = {"type": "echo", "payload": {"order": 7}}
    with platform.client("operator") as operator:
        first = operator.post("/v1/tasks", json=body, headers=key)
        assert first.status_code == 201, first.text
        assert first.json()["idempotency_key"] == key["Idempotency-Key"]
        again = operator.post("/v1/tasks", json=body, headers=key)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        # The same key in the body too is the same request.
        same = {**body, "idempotency_key": key["Idempotency-Key"]}
        also = operator.post("/v1/tasks", json=same, headers=key)
        assert also.status_code == 200, also.text
        assert also.json()["id"] == first.json()["id"]


def test_a_body_key_that_differs_from_the_header_is_refused(platform) -> None:
    body = {"type": "echo", "payload": {}, "idempotency_key": f"body-{uuid.uuid4().hex}"}
    with platform.client("operator") as operator:
        refused = operator.post(
            "/v1/tasks", json=body, headers={"Idempotency-Key": f"header-{uuid.uuid4().hex}"}
        )
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith(PROBLEM)
        assert "Idempotency-Key" in refused.json()["detail"]
        # Nothing was made under either key.
        kept = operator.post("/v1/tasks", json=body)
        assert kept.status_code == 201, kept.text


def test_a_replayed_batch_answers_the_same_tasks(platform) -> None:
    key = f"batch-{uuid.uuid4().hex}"
    own = f"own-{uuid.uuid4().hex}"
    batch = {
        "tasks": [
            {"type": "echo", "payload": {"n": 0}},
            {"type": "echo", "payload": {"n": 1}, "idempotency_key": own},
            {"type": "echo", "payload": {"n": 2}},
        ]
    }
    with platform.client("operator") as operator:
        first = operator.post("/v1/tasks/batch", json=batch, headers={"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        tasks = first.json()["tasks"]
        assert [t["idempotency_key"] for t in tasks] == [f"{key}:0", own, f"{key}:2"]
        again = operator.post("/v1/tasks/batch", json=batch, headers={"Idempotency-Key": key})
        assert again.status_code == 201, again.text
        assert [t["id"] for t in again.json()["tasks"]] == [t["id"] for t in tasks]
