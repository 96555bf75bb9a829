import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentry.tasks.v1 import tasks_pb2_grpc
from services.orchestrator.app import OrchestratorApp
from services.orchestrator.settings import OrchestratorSettings
from services.task_agent.app import TaskAgentApp
from services.task_agent.settings import TaskAgentSettings
from tests.secure import channel_to, dev_secrets, security_settings

_instances = itertools.count(1)

MakeAgent = Callable[..., Awaitable[TaskAgentApp]]


def _in_process(clean_db: str, redis_url: str, redis_prefix: str, identity: str) -> dict[str, Any]:
    """Settings of a service started in this process on this test's database and Redis
    prefix, with the certificate of `identity`."""
    return {
        "database_url": clean_db,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "grpc_port": 0,
        "migrate_on_start": False,
        "instance": f"{identity}-{next(_instances)}",
        "log_format": "console",
        "shutdown_grace_s": 2.0,
        "tls_dir": dev_secrets().tls_dir(identity),
        **security_settings(),
    }


@asynccontextmanager
async def _running(apps: list[Any]) -> AsyncIterator[None]:
    """Stops, at the end, the apps the test left running."""
    try:
        yield
    finally:
        for app in apps:
            if app.lifecycle.state.value != "TERMINATED":
                await app.stop()


@pytest.fixture
async def make_task_agent(
    clean_db: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[MakeAgent]:
    """Starts real task agents in this process, each a grpc.aio server on a free port,
    sharing this test's database and Redis prefix; stops those still running at the end."""
    running: list[TaskAgentApp] = []

    async def make(**overrides: Any) -> TaskAgentApp:
        fields = _in_process(clean_db, redis_url, redis_prefix, "task-agent")
        fields.update({"reconcile_interval_s": 0.5, **overrides})
        app = TaskAgentApp(TaskAgentSettings(**fields))
        await app.start()
        running.append(app)
        return app

    async with _running(running):
        yield make


MakeOrchestrator = Callable[..., Awaitable[OrchestratorApp]]


@pytest.fixture
async def make_orchestrator(
    clean_db: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[MakeOrchestrator]:
    """Starts real orchestrators in this process, on this test's database and Redis
    prefix; `task_agent` is the one whose TaskService they call."""
    running: list[OrchestratorApp] = []

    async def make(task_agent: TaskAgentApp | None = None, **overrides: Any) -> OrchestratorApp:
        fields = _in_process(clean_db, redis_url, redis_prefix, "orchestrator")
        if task_agent is not None:
            fields["task_service_address"] = f"127.0.0.1:{task_agent.server.port}"
        fields.update(overrides)
        app = OrchestratorApp(OrchestratorSettings(**fields))
        await app.start()
        running.append(app)
        return app

    async with _running(running):
        yield make


@pytest.fixture
async def task_agent(make_task_agent: MakeAgent) -> TaskAgentApp:
    return await make_task_agent()


@pytest.fixture
async def tasks_stub(task_agent: TaskAgentApp) -> AsyncIterator[tasks_pb2_grpc.TaskServiceStub]:
    async with channel_to(task_agent.server.port) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)
