"""What operators see of the real processes: every service's /metrics against the catalogue
(docs/metrics.md) both ways, one trace from a REST call to the handlers that ran (exported
to an OTLP receiver this test runs), and JSON log lines that name their trace."""

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dev.stack import ROOT
from tests.conftest import create_database, drop_database
from tests.e2e.conftest import Platform, running_platform

SERVICES = ("task_agent", "orchestrator", "analysis", "gateway")
CATALOGUE = ROOT / "docs/metrics.md"
TWO_STEPS = """
name: {name}
steps:
  - {{name: first, type: echo, input: {{n: {{$ref: input.n}}}}}}
  - {{name: second, type: echo, depends_on: [first], input: {{m: {{$ref: steps.first.output.n}}}}}}
"""


@dataclass(frozen=True)
class Entry:
    type: str
    labels: frozenset[str]
    services: frozenset[str]


def _catalogue() -> dict[str, Entry]:
    """The table of docs/metrics.md: name, type, labels, served by."""
    entries = {}
    for line in CATALOGUE.read_text().splitlines():
        if not line.startswith("| `agentry_"):
            continue
        name, type_, labels, served_by = (cell.strip() for cell in line.split("|")[1:5])
        services = set(SERVICES) if served_by.startswith("all") else set(served_by.split(", "))
        entries[name.strip("`")] = Entry(
            type_, frozenset(re.findall(r"`(\w+)`", labels)), frozenset(services)
        )
    return entries


@dataclass(frozen=True)
class Served:
    type: str
    labels: frozenset[str]
    sampled: bool


def _scrape(url: str) -> dict[str, Served]:
    """Our metric families as served, by their catalogued name (a counter's with _total)."""
    reply = httpx.get(url, timeout=5.0)
    assert reply.status_code == 200, reply.text
    served = {}
    for family in text_string_to_metric_families(reply.text):
        if not family.name.startswith("agentry_"):
            continue
        name = family.name
        if family.type == "counter" and not name.endswith("_total"):
            name += "_total"
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        served[name] = Served(family.type, frozenset(labels), bool(family.samples))
    return served


def _until(check: Callable[[], list[str]], within_s: float, every_s: float = 0.25) -> None:
    """Polls `check` (what is still wrong) until it answers nothing, or fails with it."""
    deadline = time.monotonic() + within_s
    while wrong := check():
        assert time.monotonic() < deadline, "\n".join(wrong)
        time.sleep(every_s)


def _until_run_ended(client: httpx.Client, run_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (run := client.get(f"/v1/runs/{run_id}").json())["state"] == "RUNNING":
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run


def _start_two_steps(client: httpx.Client) -> dict:
    name = f"traced-{uuid.uuid4().hex[:6]}"
    defined = client.put(
        f"/v1/workflows/{name}",
        content=TWO_STEPS.format(name=name).encode(),
        headers={"Content-Type": "application/yaml"},
    )
    assert defined.status_code == 201, defined.text
    started = client.post(f"/v1/workflows/{name}/runs", json={"input": {"n": 7}})
    assert started.status_code == 201, started.text
    run = _until_run_ended(client, started.json()["id"])
    assert run["state"] == "SUCCEEDED", run
    return run


def _make_every_outcome(admin: httpx.Client) -> None:
    """A task of each outcome, a retry and a workflow run: every catalogued series exists."""
    tasks = [
        {"type": "echo", "payload": {"ok": True}},
        {"type": "fail", "payload": {"times": 1}, "retry": {"initial_backoff_s": 0.01}},
        {"type": "fail", "payload": {"times": 5, "retryable": False}},
    ]
    for task in tasks:
        assert admin.post("/v1/tasks", json=task).status_code == 201
    later = admin.post("/v1/tasks", json={"type": "echo", "payload": 1, "delay_s": 600})
    assert admin.post(f"/v1/tasks/{later.json()['id']}/cancel").status_code == 200
    _start_two_steps(admin)


def test_every_service_serves_what_the_catalogue_lists_and_nothing_else(
    platform: Platform,
) -> None:
    catalogue = _catalogue()
    with platform.client("admin") as admin:
        _make_every_outcome(admin)
    # The gateway's metrics are on its metrics port, as every service's, and need no token
    # there; its public HTTP port, which the internet reaches, does not serve them.
    anonymous = httpx.get(platform.stack.metrics_url("gateway"), timeout=5.0)
    assert anonymous.status_code == 200
    assert httpx.get(f"{platform.url}/metrics", timeout=5.0).status_code == 404
    with platform.client("admin") as admin:
        assert admin.get("/metrics").status_code == 404
        assert "/metrics" not in admin.get("/openapi.json").json()["paths"]

    def wrong() -> list[str]:
        found = []
        for service in SERVICES:
            served = _scrape(platform.stack.metrics_url(service))
            for name, metric in served.items():
                entry = catalogue.get(name)
                if entry is None:
                    found.append(f"{service} serves {name}, which the catalogue lacks")
                elif metric.sampled and service not in entry.services:
                    found.append(f"{service} serves {name}; the catalogue says it does not")
                elif metric.sampled and (metric.type, metric.labels) != (entry.type, entry.labels):
                    found.append(f"{service}: {name} is {metric}, catalogued as {entry}")
            for name, entry in catalogue.items():
                if (
                    service in entry.services
                    and not served.get(name, Served("", frozenset(), False)).sampled
                ):
                    found.append(f"{service} does not serve {name}")
        return found

    # Queue, consumer and registry gauges are read every few seconds.
    _until(wrong, within_s=30.0)


def test_route_labels_are_templates_not_paths(platform: Platform) -> None:
    with platform.client("admin") as admin:
        task = admin.post("/v1/tasks", json={"type": "echo", "payload": 1}).json()
        assert admin.get(f"/v1/tasks/{task['id']}").status_code == 200
    served = httpx.get(platform.stack.metrics_url("gateway"), timeout=5.0).text
    assert 'route="/v1/tasks/{task_id}"' in served
    assert task["id"] not in served


@dataclass(frozen=True)
class Span:
    trace_id: str
    service: str
    name: str


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._changed = threading.Condition()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._changed:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [
                        Span(span.trace_id.hex(), attributes["service.name"], span.name)
                        for span in scope_spans.spans
                    ]
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, wanted: Callable[[list[Span]], bool], within_s: float) -> list[Span]:
        with self._changed:
            assert self._changed.wait_for(lambda: wanted(self.spans), within_s), self.spans
            return list(self.spans)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    spans = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield spans, port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(
    server_urls: tuple[str, str],
    redis_url: str,
    receiver: tuple[Receiver, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    """A second platform, exporting its spans to `receiver` a batch every 100 ms, on a
    database of its own (its agents leave the shared registry as they stop)."""
    database_url = create_database(server_urls[0])
    try:
        with running_platform(
            database_url,
            redis_url,
            tmp_path_factory.mktemp("traced-logs"),
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver[1]}",
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as platform:
            yield platform
    finally:
        drop_database(server_urls[0], database_url)


def _joined(trace: list[Span]) -> list[str]:
    """What of a workflow run's trace is missing."""
    wanted = {
        "the gateway's request": lambda s: s.service == "gateway" and s.name.startswith("POST"),
        "StartRun": lambda s: s.service == "orchestrator" and s.name.endswith("/StartRun"),
        "an event consumed": lambda s: s.service == "orchestrator" and s.name == "consume events",
    }
    missing = [what for what, match in wanted.items() if not any(map(match, trace))]
    # The second step is a chain link: the task agent stores it as the first one ends, with
    # no call of its own, and its execution joins the trace all the same.
    submits = [s for s in trace if s.service == "task_agent" and s.name.endswith("/SubmitTasks")]
    executions = [s for s in trace if s.service == "task_agent" and s.name == "execute echo"]
    if not submits:
        missing.append("the first step's submission")
    if len(executions) < 2:
        missing.append(f"both steps' executions (got {len(executions)})")
    return missing


def test_a_workflow_run_is_one_trace_from_rest_call_to_handlers(
    traced: Platform, receiver: tuple[Receiver, int]
) -> None:
    spans, _ = receiver
    with traced.client("admin") as admin:
        _start_two_steps(admin)

    route = "POST /v1/workflows/{name}/runs"

    def run_trace(all_spans: list[Span]) -> list[Span]:
        roots = [s for s in all_spans if s.service == "gateway" and s.name.startswith(route)]
        if not roots:
            return []
        return [s for s in all_spans if s.trace_id == roots[-1].trace_id]

    collected = spans.wait_for(lambda got: not _joined(run_trace(got)), within_s=30.0)
    trace = run_trace(collected)
    assert {s.service for s in trace} >= {"gateway", "orchestrator", "task_agent"}


def test_log_lines_are_json_naming_service_version_and_trace(traced: Platform) -> None:
    with traced.client("admin") as admin:
        task = admin.post(
            "/v1/tasks", json={"type": "fail", "payload": {"times": 5, "retryable": False}}
        )
        assert task.status_code == 201
        task_id = task.json()["id"]

    def lines(service: str) -> list[dict]:
        path: Path = traced.log_dir / f"{service}.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    def wrong() -> list[str]:
        about = [line for line in lines("task_agent") if line.get("task_id") == task_id]
        if not about:
            return [f"no log line of the task agent names task {task_id}"]
        line = about[0]
        keys = {"service", "instance", "version", "trace_id", "span_id", "event", "level"}
        return [f"{line} lacks {keys - set(line)}"] if keys - set(line) else []

    _until(wrong, within_s=15.0)


def test_runs_advanced_together_keep_their_own_traces(
    traced: Platform, receiver: tuple[Receiver, int]
) -> None:
    """The orchestrator submits several runs' steps in one SubmitTasks call; each task still
    runs in its own run's trace."""
    spans, _ = receiver
    before = {s.trace_id for s in spans.spans}
    name = f"traced-{uuid.uuid4().hex[:6]}"
    with traced.client("admin") as admin:
        defined = admin.put(
            f"/v1/workflows/{name}",
            content=TWO_STEPS.format(name=name).encode(),
            headers={"Content-Type": "application/yaml"},
        )
        assert defined.status_code == 201, defined.text

        def run_one(n: int) -> str:
            started = admin.post(f"/v1/workflows/{name}/runs", json={"input": {"n": n}})
            assert started.status_code == 201, started.text
            return str(started.json()["id"])

        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            run_ids = list(pool.map(run_one, range(8)))
        for run_id in run_ids:
            assert _until_run_ended(admin, run_id)["state"] == "SUCCEEDED"

    route = "POST /v1/workflows/{name}/runs"

    def executions_per_run(got: list[Span]) -> list[int]:
        roots = {s.trace_id for s in got if s.service == "gateway" and s.name.startswith(route)}
        mine = [r for r in roots if r not in before]
        return [sum(1 for s in got if s.trace_id == r and s.name == "execute echo") for r in mine]

    counted = executions_per_run(
        spans.wait_for(lambda got: sum(executions_per_run(got)) >= 16, within_s=30.0)
    )
    assert counted == [2] * 8
