"""What the task tests do as TaskService's clients: submit, and wait (bounded) for a state."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from services.task_agent.app import TaskAgentApp
from tests.secure import channel_to

S = tasks_pb2


def spec(type_: str, payload: object = None, **fields: object) -> tasks_pb2.TaskSpec:
    return S.TaskSpec(type=type_, payload=json.dumps(payload).encode(), **fields)


async def submit(stub, type_: str, payload: object = None, **fields: object) -> tasks_pb2.Task:
    response = await stub.SubmitTask(S.SubmitTaskRequest(task=spec(type_, payload, **fields)))
    return response.task


async def until(
    stub, task_id: str, done: Callable[[tasks_pb2.Task], bool], within: float = 5.0
) -> tasks_pb2.Task:
    """Polls GetTask until `done` holds, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        task = (await stub.GetTask(S.GetTaskRequest(task_id=task_id))).task
        if done(task):
            return task
        if loop.time() > deadline:
            raise AssertionError(f"task {task_id} still {S.TaskState.Name(task.state)}")
        await asyncio.sleep(0.02)


def in_state(*states: int) -> Callable[[tasks_pb2.Task], bool]:
    return lambda task: task.state in states


async def until_exists(
    stub, task_id: str, done: Callable[[tasks_pb2.Task], bool], within: float = 10.0
) -> tasks_pb2.Task:
    """Polls GetTask until the task exists (it may be submitted later, by another task) and
    `done` holds, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            task = (await stub.GetTask(S.GetTaskRequest(task_id=task_id))).task
            if done(task):
                return task
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if loop.time() > deadline:
            raise AssertionError(f"task {task_id} not there, or not done")
        await asyncio.sleep(0.02)


def terminal(task: tasks_pb2.Task) -> bool:
    return task.state in (S.TASK_STATE_SUCCEEDED, S.TASK_STATE_FAILED, S.TASK_STATE_CANCELLED)


@asynccontextmanager
async def stub_for(app: TaskAgentApp) -> AsyncIterator[tasks_pb2_grpc.TaskServiceStub]:
    async with channel_to(app.server.port) as channel:
        yield tasks_pb2_grpc.TaskServiceStub(channel)
