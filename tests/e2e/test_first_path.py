"""The first path through the platform: REST -> gateway -> TaskService -> Postgres -> Redis
stream -> task agent -> result, all real processes."""

import time

import httpx
import pytest

PROBLEM = "application/problem+json"


def _wait_for_state(client: httpx.Client, task_id: str, states: set[str]) -> dict:
    deadline = time.monotonic() + 15
    while True:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["state"] in states or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def _task_count(client: httpx.Client) -> int:
    return len(client.get("/v1/tasks", params={"page_size": 500}).json()["items"])


def test_echo_task_round_trip(platform) -> None:
    payload = {"order": 1234, "items": ["book", "pen"], "gift": True}
    with platform.client("operator") as client:
        created = client.post("/v1/tasks", json={"type": "echo", "payload": payload})
        assert created.status_code == 201, created.text[:300]
        task = created.json()
        assert task["state"] in {"QUEUED", "RUNNING", "SUCCEEDED"}

        done = _wait_for_state(client, task["id"], {"SUCCEEDED", "FAILED"})

    assert done["state"] == "SUCCEEDED"
    assert done["result"] == payload
    assert done["attempts"] == 1
    assert done["finished_at"] >= done["created_at"]


def test_batch_answers_in_request_order(platform) -> None:
    with platform.client("operator") as client:
        reply = client.post(
            "/v1/tasks/batch",
            json={"tasks": [{"type": "echo", "payload": {"n": n}} for n in range(5)]},
        )
        assert reply.status_code == 201, reply.text[:300]
        ids = [t["id"] for t in reply.json()["tasks"]]
        results = [_wait_for_state(client, i, {"SUCCEEDED"})["result"] for i in ids]
    assert results == [{"n": n} for n in range(5)]


def test_idempotency_key_header_returns_the_first_task(platform) -> None:
    with platform.client("operator") as client:
        body = {"type": "echo", "payload": {"charge": 10}}
        first = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": "charge-10"})
        second = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": "charge-10"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "detail"),
    [
        ("get", "/v1/no-such-route", {}, 404, "Not Found"),
        (
            "post",
            "/v1/tasks",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("post", "/v1/tasks", {"json": {"type": "no.such.type"}}, 400, "unknown task type"),
        ("post", "/v1/tasks", {"json": {"payload": {}}}, 422, "schema"),
        (
            "post",
            "/v1/tasks",
            {"json": {"type": "echo", "payload": "x" * (2 * 1024 * 1024)}},
            413,
            "larger than",
        ),
        (
            "post",
            "/v1/tasks",
            {"json": {"type": "echo", "payload": "x" * (1024 * 1024 + 1000)}},
            400,
            "over the limit",
        ),
        ("get", "/v1/tasks/not-a-uuid", {}, 400, "not a valid id"),
        ("get", "/v1/tasks/7b0c8f3e-0000-4000-8000-000000000000", {}, 404, "not found"),
    ],
)
def test_bad_requests_get_a_problem_and_change_nothing(
    platform, method, path, kwargs, status, detail
) -> None:
    with platform.client("admin") as client:
        before = _task_count(client)
        reply = getattr(client, method)(path, **kwargs)
        after = _task_count(client)

    assert reply.status_code == status, reply.text[:300]
    assert reply.headers["content-type"].startswith(PROBLEM)
    assert detail in reply.json()["detail"]
    assert after == before


def test_callers_need_a_valid_token_and_the_right_role(platform) -> None:
    body = {"type": "echo", "payload": 1}
    with platform.client(None) as anonymous:
        assert anonymous.post("/v1/tasks", json=body).status_code == 401
        forged = anonymous.get("/v1/tasks", headers={"Authorization": "Bearer abc.def.ghi"})
        assert forged.status_code == 401
        expired = platform.token("admin", ttl_s=-60)
        stale = anonymous.get("/v1/tasks", headers={"Authorization": f"Bearer {expired}"})
        assert stale.status_code == 401
        assert "expired" in stale.json()["detail"]
    with platform.client("viewer") as viewer:
        before = _task_count(viewer)
        refused = viewer.post("/v1/tasks", json=body)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith(PROBLEM)
        assert _task_count(viewer) == before
    with platform.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200


def test_a_dead_letter_is_redriven_and_purged_through_rest(platform) -> None:
    body = {
        "type": "fail",
        "payload": {"times": 1, "retryable": False, "message": "card declined"},
        "labels": {"case": "redrive"},
    }
    with platform.client("operator") as operator:
        failed = operator.post("/v1/tasks", json=body).json()
        failed = _wait_for_state(operator, failed["id"], {"FAILED"})
        assert failed["error"]["reason"] == "non_retryable"
        assert "card declined" in failed["error"]["message"]
        letters = operator.get("/v1/dead-letters", params={"type": "fail"}).json()["items"]
        [letter] = [d for d in letters if d["task"]["id"] == failed["id"]]

        redriven = operator.post(
            f"/v1/dead-letters/{letter['id']}/redrive", json={"payload": {"times": 0}}
        )
        assert redriven.status_code == 201, redriven.text[:300]
        done = _wait_for_state(operator, redriven.json()["id"], {"SUCCEEDED"})
        assert done["parent_id"] == failed["id"]
        again = operator.post(f"/v1/dead-letters/{letter['id']}/redrive", json={})
        assert again.status_code == 409

        assert operator.post("/v1/dead-letters/purge", json={"type": "fail"}).status_code == 403
    with platform.client("admin") as admin:
        purged = admin.post("/v1/dead-letters/purge", json={"type": "fail"})
        assert purged.status_code == 200
        assert purged.json()["purged"] >= 1
        assert admin.get("/v1/dead-letters", params={"type": "fail"}).json()["items"] == []


def test_task_types_and_queues_are_listed(platform) -> None:
    with platform.client("viewer") as viewer:
        types = {t["name"]: t for t in viewer.get("/v1/task-types").json()["items"]}
        queues = viewer.get("/v1/queues")
    assert {"echo", "sleep", "fail", "http.request", "webhook.deliver"} <= set(types)
    assert types["echo"]["agents"], "a running agent serves echo"
    assert queues.status_code == 200
    assert all(q["depth"] >= 0 for q in queues.json()["items"])


def test_every_service_is_in_the_agent_registry(platform) -> None:
    with platform.client("viewer") as viewer:
        deadline = time.monotonic() + 15
        while True:
            agents = viewer.get("/v1/agents").json()["items"]
            roles = {a["role"]: a["state"] for a in agents}
            if (
                set(roles) >= {"task_agent", "orchestrator", "analysis"}
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
    assert set(roles) >= {"task_agent", "orchestrator", "analysis"}
    assert all(state in {"IDLE", "ACTIVE"} for state in roles.values())
    [task_agent] = [a for a in agents if a["role"] == "task_agent"]
    assert "echo" in task_agent["task_types"]


def test_values_postgres_cannot_store_are_a_400(platform) -> None:
    with platform.client("admin") as admin:
        for path, params in (
            ("/v1/agents", {"role": "a\x00b"}),
            ("/v1/tasks", {"type": "a\x00b"}),
            ("/v1/runs", {"workflow": "a\x00b"}),
        ):
            reply = admin.get(path, params=params)
            assert reply.status_code == 400, (path, reply.text[:200])
            assert reply.headers["content-type"].startswith(PROBLEM)
            assert "NUL" in reply.json()["detail"]
