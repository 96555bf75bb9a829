"""`kill -9` a task agent in the middle of a task: the task finishes on another agent, on
the next attempt, and its result is recorded once."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from dev.embedded import death_signal_hook, free_port
from dev.stack import ROOT
from libs.common.redis_client import Keys
from tests.conftest import create_database, drop_database
from tests.secure import call_metadata, dev_secrets, security_settings, sync_channel_to

S = tasks_pb2


def _serving(port: int) -> bool:
    with sync_channel_to(port) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _until(check, within: float, what: str):
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


@pytest.fixture
def two_agents(server_urls: tuple[str, str], redis_url: str, tmp_path: Path) -> Iterator[dict]:
    """Two task agents on a database of their own: their reconcilers take up no other
    test's due tasks."""
    database_url = create_database(server_urls[0])
    prefix = f"e2e-crash-{uuid.uuid4().hex[:8]}"
    agents = {}
    for name in ("agent-a", "agent-b"):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "libs/protos")]),
            "AGENTRY_DATABASE_URL": database_url,
            "AGENTRY_REDIS_URL": redis_url,
            "AGENTRY_REDIS_PREFIX": prefix,
            "AGENTRY_GRPC_PORT": str(port),
            "AGENTRY_INSTANCE": name,
            "AGENTRY_LEASE_S": "1.5",
            "AGENTRY_RECONCILE_INTERVAL_S": "0.3",
            "AGENTRY_MIGRATE_ON_START": "false",
            "AGENTRY_TLS_DIR": str(dev_secrets().tls_dir("task-agent")),
            **{f"AGENTRY_{key.upper()}": str(value) for key, value in security_settings().items()},
        }
        with open(tmp_path / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.task_agent.main"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=death_signal_hook(signal.SIGTERM),
            )
        agents[name] = {"proc": proc, "port": port}
    try:
        for name, agent in agents.items():
            _until(lambda a=agent: _serving(a["port"]), 60, f"{name} to serve")
        yield {"agents": agents, "prefix": prefix}
    finally:
        for agent in agents.values():
            if agent["proc"].poll() is None:
                agent["proc"].terminate()
            agent["proc"].wait(timeout=30)
        drop_database(server_urls[0], database_url)


def test_a_task_survives_the_kill_of_its_agent(two_agents, redis_url: str) -> None:
    agents = two_agents["agents"]
    channel = sync_channel_to(agents["agent-a"]["port"])
    stub = tasks_pb2_grpc.TaskServiceStub(channel)
    submitted = stub.SubmitTask(
        S.SubmitTaskRequest(task=S.TaskSpec(type="sleep", payload=b'{"seconds": 2}')),
        metadata=call_metadata(),
    ).task

    def get() -> tasks_pb2.Task:
        return stub.GetTask(S.GetTaskRequest(task_id=submitted.id), metadata=call_metadata()).task

    running = _until(lambda: (t := get()).state == S.TASK_STATE_RUNNING and t, 15, "RUNNING")
    victim = running.agent.removeprefix("task_agent/")
    survivor = next(name for name in agents if name != victim)
    agents[victim]["proc"].send_signal(signal.SIGKILL)
    agents[victim]["proc"].wait(timeout=10)
    channel.close()
    channel = sync_channel_to(agents[survivor]["port"])
    stub = tasks_pb2_grpc.TaskServiceStub(channel)

    done = _until(
        lambda: (t := get()).state in (S.TASK_STATE_SUCCEEDED, S.TASK_STATE_FAILED) and t,
        30,
        "the end",
    )

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert done.attempts == 2
    assert done.agent == f"task_agent/{survivor}"
    assert json.loads(done.result) == {"slept_s": 2.0}
    client = redis.Redis.from_url(redis_url)
    events = [
        event
        for _, fields in client.xrange(Keys(two_agents["prefix"]).event_stream())
        for event in events_pb2.EventBatch.FromString(fields[b"e"]).events
    ]
    client.close()
    mine = [e.type for e in events if e.subject == f"task/{submitted.id}"]
    assert mine.count("task.succeeded") == 1
    assert mine.count("task.started") == 2
    channel.close()
