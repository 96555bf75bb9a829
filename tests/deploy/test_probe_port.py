"""What the manifests rely on in the code: the plaintext health port Kubernetes' `grpc:`
probes call (the main port wants a client certificate), and client channels that spread
calls over every address a headless Service resolves to."""

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dev.secrets import ensure
from libs.common.channels import open_channel
from libs.common.grpc_server import GrpcServer
from libs.common.identity import AgentIdentity
from libs.common.settings import GrpcServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def _check(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


async def test_probes_get_the_health_status_in_plaintext_and_nothing_else(tmp_path: Path) -> None:
    secrets = ensure(tmp_path)
    identity = AgentIdentity(secrets.tls_dir("task-agent"), "task_agent")
    settings = GrpcServerSettings(
        database_url="postgresql://unused", redis_url="redis://unused", grpc_port=0, health_port=0
    )
    server = GrpcServer(settings, [], _PassThrough(), identity.server_credentials())
    port = await server.start()
    probe = f"127.0.0.1:{server.health_port}"
    try:
        assert server.health_port not in (0, port)
        assert await _check(probe) == NOT_SERVING
        await server.set_serving(True)
        assert await _check(probe) == SERVING
        # The main port takes no plaintext call, health included.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(f"127.0.0.1:{port}")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The probe port serves the health service alone.
        async with grpc.aio.insecure_channel(probe) as channel:
            other = channel.unary_unary("/agentry.tasks.v1.TaskService/GetTask")
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await other(b"", timeout=5)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop()
    with pytest.raises(grpc.aio.AioRpcError):
        await _check(probe)


async def test_without_a_health_port_there_is_no_probe_server() -> None:
    settings = GrpcServerSettings(database_url="postgresql://unused", redis_url="redis://unused")
    assert settings.health_port is None
    server = GrpcServer(settings, [], _PassThrough(), None)
    assert server.health_port == 0


class _Counting(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls += 1
        return await continuation(details)


async def test_a_channel_spreads_calls_over_every_address_round_robin() -> None:
    counters, servers, ports = [], [], []
    for _ in range(2):
        counter = _Counting()
        server = grpc.aio.server(interceptors=[counter])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await servicer.set("", SERVING)
        counters.append(counter)
        servers.append(server)
    # What a headless Service's DNS name resolves to: both pods' addresses.
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    channel = open_channel(target, "task-agent", None)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
    finally:
        await channel.close()
        for server in servers:
            await server.stop(None)
    assert all(c.calls >= 5 for c in counters), [c.calls for c in counters]
