"""`http.request` and `webhook.deliver` as clients see them: submitted through the real gRPC
API of a running agent, sending to a real HTTP server on 127.0.0.1 whose answers each test
scripts per path, and which records what it received (with its own clock)."""

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from libs.common.redis_client import Keys, create_redis
from libs.common.webhooks import verify
from services.task_agent.http_builtins import MAX_RESPONSE_BYTES
from services.task_agent.limits import RateLimiter
from tests.secure import channel_to

S = tasks_pb2
SECRET = "whsec_do_not_leak_3f9a"


# The upstream


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # The server takes this long to answer (in its own thread).
    delay_s: float = 0.0


def json_reply(value: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(
        status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers}
    )


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes


class Upstream:
    """Each path answers its script of replies in turn, repeating the last; unscripted paths
    answer 200 with an empty body."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> str:
        with self._lock:
            self._scripts[path] = list(replies)
        return self.url(path)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def answer(self, request: Received) -> Reply:
        with self._lock:
            self._received.append(request)
            script = self._scripts.get(request.path, [])
            return script.pop(0) if len(script) > 1 else (script[0] if script else Reply())


def _handler_for(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Received(
                at=time.monotonic(),
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            reply = upstream.answer(request)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    thread = threading.Thread(target=up.server.serve_forever, daemon=True)
    thread.start()
    yield up
    up.server.shutdown()
    up.server.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def tasks_stub(make_task_agent) -> AsyncIterator[tasks_pb2_grpc.TaskServiceStub]:
    """An agent that knows the webhook secret "shop" and may call this machine's upstream."""
    agent = await make_task_agent(
        webhook_secrets={"shop": SECRET}, http_allow_private_networks=True
    )
    async with channel_to(agent.server.port) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)


async def test_private_networks_are_refused_by_default(make_task_agent, upstream) -> None:
    agent = await make_task_agent()
    async with channel_to(agent.server.port) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        url = upstream.script("/internal", Reply(200))
        task = await _submit(stub, "http.request", {"url": url})
        done = await _finished(stub, task.id)

    assert done.state == S.TASK_STATE_FAILED
    assert done.error.reason == "non_retryable"
    assert "not a public address" in done.error.message
    assert upstream.received("/internal") == []


# Submitting and waiting


def _retry(max_attempts: int) -> tasks_pb2.RetryPolicy:
    return S.RetryPolicy(max_attempts=max_attempts, initial_backoff_s=0.01, max_backoff_s=0.02)


async def _submit(stub, type_: str, payload: Any, **fields: Any) -> tasks_pb2.Task:
    spec = S.TaskSpec(type=type_, payload=json.dumps(payload).encode(), **fields)
    return (await stub.SubmitTask(S.SubmitTaskRequest(task=spec))).task


async def _finished(stub, task_id: str, within: float = 10.0) -> tasks_pb2.Task:
    """The task once terminal, as WatchTask streams it."""
    last = None
    async with asyncio.timeout(within):
        async for update in stub.WatchTask(S.WatchTaskRequest(task_id=task_id)):
            last = update.task
    assert last is not None
    return last


async def _until_state(stub, task_id: str, state: int, within: float = 10.0) -> tasks_pb2.Task:
    """Polls GetTask until the task is in `state`, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        task = (await stub.GetTask(S.GetTaskRequest(task_id=task_id))).task
        if task.state == state:
            return task
        if loop.time() > deadline:
            raise AssertionError(f"task {task_id} still {S.TaskState.Name(task.state)}")
        await asyncio.sleep(0.02)


async def _run(stub, type_: str, payload: Any, **fields: Any) -> tasks_pb2.Task:
    task = await _submit(stub, type_, payload, **fields)
    return await _finished(stub, task.id)


# http.request


async def test_a_get_returns_the_status_headers_and_parsed_json(tasks_stub, upstream) -> None:
    url = upstream.script("/items", json_reply({"items": [1, 2]}, **{"X-Request-Id": "r-1"}))

    done = await _run(tasks_stub, "http.request", {"url": url, "headers": {"X-Trace": "t-1"}})

    assert done.state == S.TASK_STATE_SUCCEEDED
    result = json.loads(done.result)
    assert result["status"] == 200
    assert result["json"] == {"items": [1, 2]}
    assert "text" not in result
    assert result["headers"]["x-request-id"] == "r-1"
    assert result["headers"]["content-type"] == "application/json"
    [received] = upstream.received("/items")
    assert received.method == "GET"
    assert received.headers["x-trace"] == "t-1"


async def test_a_posted_json_body_arrives_intact(tasks_stub, upstream) -> None:
    url = upstream.script("/orders", Reply(201, b"created", {"Content-Type": "text/plain"}))
    order = {"customer": "Zoë", "lines": [{"sku": "A-1", "qty": 2, "price": 9.5}], "gift": None}

    done = await _run(tasks_stub, "http.request", {"method": "post", "url": url, "json": order})

    result = json.loads(done.result)
    assert (result["status"], result["text"]) == (201, "created")
    [received] = upstream.received("/orders")
    assert received.method == "POST"
    assert received.headers["content-type"] == "application/json"
    assert json.loads(received.body) == order


async def test_a_text_body_is_sent_as_given(tasks_stub, upstream) -> None:
    url = upstream.url("/raw")
    payload = {
        "method": "PUT",
        "url": url,
        "body": "a,b\n1,2\n",
        "headers": {"Content-Type": "text/csv"},
    }

    done = await _run(tasks_stub, "http.request", payload)

    assert done.state == S.TASK_STATE_SUCCEEDED
    [received] = upstream.received("/raw")
    assert (received.method, received.body) == ("PUT", b"a,b\n1,2\n")
    assert received.headers["content-type"] == "text/csv"


async def test_a_long_response_is_cut_and_says_so(tasks_stub, upstream) -> None:
    url = upstream.script("/big", Reply(200, b"x" * (MAX_RESPONSE_BYTES + 1000)))

    done = await _run(tasks_stub, "http.request", {"url": url})

    result = json.loads(done.result)
    assert result["truncated"] is True
    assert result["text"] == "x" * MAX_RESPONSE_BYTES


async def test_server_errors_are_retried_until_the_request_succeeds(tasks_stub, upstream) -> None:
    url = upstream.script("/flaky", Reply(503), Reply(503), json_reply({"ok": True}))

    done = await _run(tasks_stub, "http.request", {"url": url}, retry=_retry(5))

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 3
    assert json.loads(done.result)["json"] == {"ok": True}
    assert len(upstream.received("/flaky")) == 3


async def test_a_429_is_retried_no_earlier_than_its_retry_after(tasks_stub, upstream) -> None:
    url = upstream.script("/busy", Reply(429, headers={"Retry-After": "1"}), json_reply("ok"))

    done = await _run(tasks_stub, "http.request", {"url": url}, retry=_retry(3))

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 2
    first, second = upstream.received("/busy")
    # The policy alone would have retried within 20 ms.
    assert 0.95 <= second.at - first.at < 5


async def test_a_429_makes_every_replica_back_off_from_the_host(
    tasks_stub, upstream, redis_url: str, redis_prefix: str
) -> None:
    url = upstream.script("/busy", Reply(429, headers={"Retry-After": "30"}))

    task = await _submit(tasks_stub, "http.request", {"url": url}, retry=_retry(3))
    retrying = await _until_state(tasks_stub, task.id, S.TASK_STATE_RETRYING)

    assert retrying.run_at.ToDatetime() - retrying.updated_at.ToDatetime() >= timedelta(seconds=29)
    client = create_redis(redis_url)
    try:
        other_replica = RateLimiter(client, Keys(redis_prefix))
        wait = await other_replica.acquire("host:127.0.0.1", rate_per_s=100)
    finally:
        await client.aclose()
    assert 25 < wait <= 30
    await tasks_stub.CancelTask(S.CancelTaskRequest(task_id=task.id))


async def test_a_404_fails_at_once_saying_what_the_server_said(tasks_stub, upstream) -> None:
    url = upstream.script("/gone", Reply(404, b"no such order", {"Content-Type": "text/plain"}))

    done = await _run(tasks_stub, "http.request", {"url": url}, retry=_retry(5))

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 1
    assert done.error.reason == "non_retryable"
    assert "HTTP 404" in done.error.message
    assert "no such order" in done.error.message
    assert len(upstream.received("/gone")) == 1


async def test_a_refused_connection_is_retried_then_exhausts_the_retries(tasks_stub) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    done = await _run(
        tasks_stub,
        "http.request",
        {"url": f"http://127.0.0.1:{closed_port}/"},
        retry=_retry(2),
    )

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 2
    assert done.error.reason == "retries_exhausted"
    assert "ConnectError" in done.error.message


async def test_an_upstream_slower_than_the_request_timeout_is_retried(tasks_stub, upstream) -> None:
    url = upstream.script("/slow", Reply(200, delay_s=1.0), Reply(200, b"fast"))

    done = await _run(tasks_stub, "http.request", {"url": url, "timeout_s": 0.2}, retry=_retry(2))

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 2
    assert json.loads(done.result)["text"] == "fast"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "payload.url is required"),
        ({"url": "ftp://127.0.0.1:{port}/x"}, "must be an http or https URL, not ftp"),
        ({"url": "127.0.0.1:{port}/x"}, "must be an http or https URL"),
        ({"url": "http:///x"}, "payload.url has no host"),
        ({"url": "http://127.0.0.1:{port}/x", "method": "BREW"}, "payload.method must be"),
        ({"url": "http://127.0.0.1:{port}/x", "json": 1, "body": "1"}, "not both"),
        ({"url": "http://127.0.0.1:{port}/x", "headers": ["X-A: 1"]}, "payload.headers"),
        ({"url": "http://127.0.0.1:{port}/x", "timeout_s": -1}, "payload.timeout_s"),
    ],
    ids=["no url", "ftp", "no scheme", "no host", "method", "json and body", "headers", "timeout"],
)
async def test_a_bad_payload_fails_at_once_and_sends_nothing(
    tasks_stub, upstream, payload: dict[str, Any], message: str
) -> None:
    payload = {k: v.format(port=upstream.port) if k == "url" else v for k, v in payload.items()}

    done = await _run(tasks_stub, "http.request", payload, retry=_retry(5))

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 1
    assert done.error.reason == "non_retryable"
    assert message in done.error.message
    assert upstream.received() == []


async def test_a_host_rate_limit_spaces_requests_across_the_agent(tasks_stub, upstream) -> None:
    url = upstream.url("/limited")
    payload = {"url": url, "rate_limit_per_s": 4}
    specs = [S.TaskSpec(type="http.request", payload=json.dumps(payload).encode())] * 6

    submitted = (await tasks_stub.SubmitTasks(S.SubmitTasksRequest(tasks=specs))).tasks
    done = [await _finished(tasks_stub, t.id) for t in submitted]

    assert [t.state for t in done] == [S.TASK_STATE_SUCCEEDED] * 6
    arrivals = sorted(r.at for r in upstream.received("/limited"))
    # A burst of four, then one every quarter second.
    assert arrivals[-1] - arrivals[0] >= 0.45


# webhook.deliver


def _webhook(url: str, body: Any, **extra: Any) -> dict[str, Any]:
    return {"url": url, "body": body, "secret_ref": "shop", **extra}


async def test_a_webhook_is_delivered_signed_so_the_receiver_can_verify_it(
    tasks_stub, upstream
) -> None:
    url = upstream.script("/hooks", Reply(204))
    body = {"order": 17, "status": "paid", "amount": {"value": 1250, "currency": "EUR"}}
    payload = _webhook(url, body, event="order.paid", headers={"X-Tenant": "acme"})

    with capture_logs() as logs:
        task = await _submit(tasks_stub, "webhook.deliver", payload)
        done = await _finished(tasks_stub, task.id)

    assert done.state == S.TASK_STATE_SUCCEEDED
    result = json.loads(done.result)
    assert result["status"] == 204
    assert result["delivered_at"]
    [received] = upstream.received("/hooks")
    h = received.headers
    assert verify(
        SECRET, h["agentry-webhook-timestamp"], received.body, h["agentry-webhook-signature"]
    )
    assert abs(int(h["agentry-webhook-timestamp"]) - time.time()) < 60
    assert h["agentry-webhook-id"] == task.id
    assert h["agentry-webhook-event"] == "order.paid"
    assert h["content-type"] == "application/json"
    assert h["x-tenant"] == "acme"
    assert received.body == json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    assert any(e["event"] == "http response" for e in logs), "the logs were captured"
    assert SECRET not in repr(logs)
    assert SECRET not in done.result.decode()


async def test_a_retried_webhook_keeps_its_id_and_each_attempt_verifies(
    tasks_stub, upstream
) -> None:
    url = upstream.script("/hooks", Reply(503), Reply(200))

    done = await _run(tasks_stub, "webhook.deliver", _webhook(url, [1, 2, 3]), retry=_retry(3))

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 2
    first, second = upstream.received("/hooks")
    assert first.headers["agentry-webhook-id"] == second.headers["agentry-webhook-id"] == done.id
    for delivery in (first, second):
        ts = delivery.headers["agentry-webhook-timestamp"]
        signature = delivery.headers["agentry-webhook-signature"]
        assert verify(SECRET, ts, delivery.body, signature)
        assert not verify(SECRET, ts, delivery.body.replace(b"3", b"4"), signature)
        assert not verify(SECRET, ts, delivery.body, signature, now=int(ts) + 301)
        assert not verify("another secret", ts, delivery.body, signature)


async def test_a_webhook_the_receiver_refuses_fails_without_revealing_the_secret(
    tasks_stub, upstream
) -> None:
    url = upstream.script("/hooks", Reply(400, b"bad signature"))

    done = await _run(tasks_stub, "webhook.deliver", _webhook(url, {"a": 1}), retry=_retry(5))

    assert done.state == S.TASK_STATE_FAILED
    assert done.attempts == 1
    assert done.error.reason == "non_retryable"
    assert "HTTP 400" in done.error.message
    assert SECRET not in done.error.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"secret_ref": ""}, "payload.secret_ref is required"),
        ({"secret_ref": "nope"}, "unknown secret_ref"),
        ({"headers": {"Agentry-Webhook-Id": "mine"}}, "may not set Agentry-Webhook-Id"),
        ({"url": "file:///etc/passwd"}, "must be an http or https URL"),
    ],
    ids=["no secret ref", "unknown secret ref", "own id", "file url"],
)
async def test_a_bad_webhook_payload_fails_at_once_and_sends_nothing(
    tasks_stub, upstream, change: dict[str, Any], message: str
) -> None:
    payload = {**_webhook(upstream.url("/hooks"), {"a": 1}), **change}

    done = await _run(tasks_stub, "webhook.deliver", payload, retry=_retry(5))

    assert done.state == S.TASK_STATE_FAILED
    assert done.error.reason == "non_retryable"
    assert message in done.error.message
    assert upstream.received() == []
