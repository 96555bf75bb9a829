"""Calls the workflow tests share."""

import asyncio
import json

from agentry.workflows.v1 import workflows_pb2 as W


async def register(stub, definition: dict) -> W.Workflow:
    reply = await stub.RegisterWorkflow(
        W.RegisterWorkflowRequest(
            name=definition["name"], definition=json.dumps(definition).encode()
        )
    )
    return reply.workflow


async def start(stub, name: str, run_input: dict, key: str = "") -> W.StartRunResponse:
    return await stub.StartRun(
        W.StartRunRequest(workflow=name, input=json.dumps(run_input).encode(), idempotency_key=key)
    )


async def until_ended(stub, run_id: str, within: float = 20.0) -> W.Run:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        run = (await stub.GetRun(W.GetRunRequest(run_id=run_id))).run
        if run.state != W.RUN_STATE_RUNNING:
            return run
        assert loop.time() < deadline, run
        await asyncio.sleep(0.05)
