"""Certificates rotate without a restart: the server serves (and trusts) the new files from
the next handshake on."""

import shutil

import grpc

from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from dev.secrets import issue, make_ca
from libs.common.channels import open_channel
from libs.common.identity import AgentIdentity
from tests.secure import dev_secrets, person_token


async def _lists(port: int, identity: AgentIdentity) -> grpc.StatusCode:
    async with open_channel(
        f"127.0.0.1:{port}", "task-agent", identity, person_token("viewer")
    ) as channel:
        try:
            await tasks_pb2_grpc.TaskServiceStub(channel).ListTasks(
                tasks_pb2.ListTasksRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_a_rotated_certificate_is_served_without_a_restart(make_task_agent, tmp_path) -> None:
    tls_dir = tmp_path / "task-agent"
    shutil.copytree(dev_secrets().tls_dir("task-agent"), tls_dir)
    agent = await make_task_agent(tls_dir=tls_dir)
    old_gateway = AgentIdentity(dev_secrets().tls_dir("gateway"), "gateway")
    assert await _lists(agent.server.port, old_gateway) == grpc.StatusCode.OK

    # The cluster's CA changes; cert-manager rewrites every Secret.
    make_ca(tmp_path / "new-ca", "Agentry CA, next year")
    issue(tmp_path / "new-ca", "task-agent", tls_dir)
    issue(tmp_path / "new-ca", "gateway", tmp_path / "gateway")
    new_gateway = AgentIdentity(tmp_path / "gateway", "gateway")

    assert await _lists(agent.server.port, new_gateway) == grpc.StatusCode.OK
    assert await _lists(agent.server.port, old_gateway) == grpc.StatusCode.UNAVAILABLE
