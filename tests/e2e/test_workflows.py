"""Workflows through the website's door, on the real processes: definitions in YAML,
idempotent starts, runs watched to their end; and an orchestrator killed mid-run."""

import signal
import time
import uuid

import httpx

PROBLEM = "application/problem+json"

PIPELINE = """
name: {name}
steps:
  - name: fetch
    type: echo
    input: {{order: {{$ref: input.order}}}}
  - name: nap
    type: sleep
    depends_on: [fetch]
    input: {{seconds: {{$ref: input.nap}}}}
  - name: each
    type: echo
    depends_on: [nap]
    for_each: {{$ref: input.items}}
    input: {{line: {{$ref: item}}}}
  - name: total
    type: echo
    depends_on: [fetch, each]
    input: {{order: {{$ref: steps.fetch.output.order}}, lines: {{$ref: steps.each.output}}}}
"""


def _define(admin: httpx.Client, name: str) -> dict:
    reply = admin.put(
        f"/v1/workflows/{name}",
        content=PIPELINE.format(name=name).encode(),
        headers={"Content-Type": "application/yaml"},
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def _until_ended(client: httpx.Client, run_id: str, within: float = 60.0) -> dict:
    deadline = time.monotonic() + within
    while (run := client.get(f"/v1/runs/{run_id}").json())["state"] == "RUNNING":
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run


def test_a_workflow_is_defined_started_and_followed_over_rest(platform) -> None:
    name = f"orders-{uuid.uuid4().hex[:6]}"
    with platform.client("admin") as admin:
        assert _define(admin, name)["version"] == 1
    body = {"input": {"order": 42, "nap": 0, "items": ["a", "b"]}}
    with platform.client("operator") as operator:
        key = {"Idempotency-Key": f"order-42-{name}"}
        started = operator.post(f"/v1/workflows/{name}/runs", json=body, headers=key)
        assert started.status_code == 201, started.text
        again = operator.post(f"/v1/workflows/{name}/runs", json=body, headers=key)
        assert again.status_code == 200
        assert again.json()["id"] == started.json()["id"]
        run = _until_ended(operator, started.json()["id"])
        assert run["state"] == "SUCCEEDED", run
        steps = {s["name"]: s for s in run["steps"]}
        assert steps["total"]["output"] == {"order": 42, "lines": [{"line": "a"}, {"line": "b"}]}
        assert len(steps["each"]["task_ids"]) == 2
        listed = operator.get("/v1/runs", params={"workflow": name}).json()["items"]
        assert [r["id"] for r in listed] == [run["id"]]
    with platform.client("viewer") as viewer:
        assert viewer.get(f"/v1/workflows/{name}").json()["version"] == 1
        refused = viewer.put(f"/v1/workflows/{name}", json={"steps": []})
        assert refused.status_code == 403
        assert viewer.post(f"/v1/workflows/{name}/runs", json=body).status_code == 403


def test_a_bad_definition_is_a_400_naming_the_step(platform) -> None:
    with platform.client("admin") as admin:
        bad = {
            "steps": [
                {"name": "a", "type": "echo"},
                {"name": "b", "type": "echo", "depends_on": ["c"]},
            ]
        }
        reply = admin.put("/v1/workflows/broken", json=bad)
        assert reply.status_code == 400
        assert reply.headers["content-type"].startswith(PROBLEM)
        assert '"b"' in reply.json()["detail"]
        assert admin.get("/v1/workflows/broken").status_code == 404
        missing = admin.post("/v1/workflows/nothing-here/runs", json={"input": {}})
        assert missing.status_code == 404


def test_a_run_survives_the_kill_of_its_orchestrator(platform) -> None:
    name = f"crash-{uuid.uuid4().hex[:6]}"
    with platform.client("admin") as admin:
        _define(admin, name)
        started = admin.post(
            f"/v1/workflows/{name}/runs", json={"input": {"order": 7, "nap": 2, "items": ["x"]}}
        ).json()
        deadline = time.monotonic() + 20
        while True:
            run = admin.get(f"/v1/runs/{started['id']}").json()
            nap = {s["name"]: s for s in run["steps"]}.get("nap")
            if nap is not None and nap["state"] == "RUNNING":
                break
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        orchestrator = platform.stack.processes["orchestrator"]
        orchestrator.send_signal(signal.SIGKILL)
        orchestrator.wait(timeout=10)
        # The nap ends while no orchestrator runs: its end waits in the event stream.
        [nap_task] = nap["task_ids"]
        while admin.get(f"/v1/tasks/{nap_task}").json()["state"] != "SUCCEEDED":
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        platform.stack.start_service("orchestrator")
        platform.stack.wait_ready()
        run = _until_ended(admin, started["id"])
    assert run["state"] == "SUCCEEDED", run
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["total"]["output"] == {"order": 7, "lines": [{"line": "x"}]}
    assert len(steps["nap"]["task_ids"]) == 1


def test_analysis_steps_run_on_the_analysis_service(platform) -> None:
    name = f"review-{uuid.uuid4().hex[:6]}"
    errors = [20.0, 21.5, 19.0, 20.5, 18.5, 21.0, 20.0, 19.5, 20.5, 19.0] * 3
    errors[24] = 80.0
    definition = {
        "steps": [
            {"name": "stats", "type": "analysis.describe", "input": {"values": [4, 8, 15, 16]}},
            {"name": "spikes", "type": "analysis.anomalies", "input": {"values": errors}},
            {"name": "logs", "type": "analysis.patterns", "input": {"lines": ["a 1", "a 2", "b"]}},
            {
                "name": "pages",
                "type": "echo",
                "depends_on": ["spikes"],
                "for_each": {"$ref": "steps.spikes.output.anomalies"},
                "input": {"minute": {"$ref": "item.index"}},
            },
        ]
    }
    with platform.client("admin") as admin:
        defined = admin.put(f"/v1/workflows/{name}", json=definition)
        assert defined.status_code == 201, defined.text
        started = admin.post(f"/v1/workflows/{name}/runs", json={"input": {}}).json()
        run = _until_ended(admin, started["id"])
    assert run["state"] == "SUCCEEDED", run
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["stats"]["output"]["mean"] == 10.75
    assert steps["pages"]["output"] == [{"minute": 24}]
    assert [c["count"] for c in steps["logs"]["output"]["clusters"]] == [2, 1]
