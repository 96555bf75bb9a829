"""The four services as four processes on one machine: what `make run` starts, and what the
end-to-end tests start. Each child dies with its parent (parent-death signal)."""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dev.embedded import death_signal_hook, free_port
from dev.secrets import DevSecrets
from libs.common.identity import AgentIdentity

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
GRPC_SERVICES = ("task_agent", "orchestrator", "analysis")


def identity_of(service: str) -> str:
    """The identity in a service's certificate: `task_agent` is `task-agent`."""
    return service.replace("_", "-")


@dataclass(frozen=True)
class Ports:
    task_agent: int = 50051
    orchestrator: int = 50052
    analysis: int = 50053
    gateway: int = 8080
    # Prometheus /metrics of each service (AGENTRY_METRICS_PORT); None: any free port.
    task_agent_metrics: int | None = None
    orchestrator_metrics: int | None = None
    analysis_metrics: int | None = None
    gateway_metrics: int | None = None

    def grpc(self, service: str) -> int:
        port: int = getattr(self, service)
        return port

    def metrics(self, service: str) -> int | None:
        port: int | None = getattr(self, f"{service}_metrics")
        return port


class Stack:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        ports: Ports,
        secrets: DevSecrets,
        env: Mapping[str, str],
        log_dir: Path | None = None,
        tls: bool = True,
    ) -> None:
        """`tls` False runs the services with mTLS and agent tokens turned off (benchmarks
        that measure what security costs)."""
        self.ports = ports
        self.secrets = secrets
        self._tls = tls
        # Readiness checks connect as the gateway: servers take no call without a certificate.
        self._probe_identity = AgentIdentity(secrets.tls_dir("gateway"), "gateway")
        self.gateway_url = f"http://127.0.0.1:{ports.gateway}"
        self._metrics_ports = {
            s: ports.metrics(s) or free_port() for s in (*GRPC_SERVICES, "gateway")
        }
        self._log_dir = log_dir
        self._env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "libs/protos")]),
            "PYTHONUNBUFFERED": "1",
            # See the Makefile: gRPC's fork handlers crash fork+exec children.
            "GRPC_ENABLE_FORK_SUPPORT": "false",
            "AGENTRY_DATABASE_URL": database_url,
            "AGENTRY_REDIS_URL": redis_url,
            "AGENTRY_TASK_SERVICE_ADDRESS": f"127.0.0.1:{ports.task_agent}",
            "AGENTRY_WORKFLOW_SERVICE_ADDRESS": f"127.0.0.1:{ports.orchestrator}",
            "AGENTRY_ANALYSIS_SERVICE_ADDRESS": f"127.0.0.1:{ports.analysis}",
            "AGENTRY_REGISTRY_ADDRESS": f"127.0.0.1:{ports.orchestrator}",
            "AGENTRY_JWT_PUBLIC_KEY_FILE": str(secrets.jwt_public_key),
            "AGENTRY_DATA_KEYS_FILE": str(secrets.data_keys),
            **({} if tls else {"AGENTRY_TLS_DISABLED": "true"}),
            **env,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self) -> None:
        for service in (*GRPC_SERVICES, "gateway"):
            self.start_service(service)

    def start_service(self, service: str) -> None:
        """One of the platform's services, on its port (again, after a crash)."""
        env = dict(self._env)
        if service == "gateway":
            env["AGENTRY_HTTP_PORT"] = str(self.ports.gateway)
        else:
            env["AGENTRY_GRPC_PORT"] = str(self.ports.grpc(service))
        env["AGENTRY_METRICS_PORT"] = str(self._metrics_ports[service])
        self.start_one(service, env)

    def metrics_url(self, service: str) -> str:
        """Where Prometheus reads the service's metrics."""
        return f"http://127.0.0.1:{self._metrics_ports[service]}/metrics"

    def start_one(self, service: str, env: Mapping[str, str] | None = None) -> None:
        env = {
            "AGENTRY_TLS_DIR": str(self.secrets.tls_dir(identity_of(service))),
            **(env or self._env),
        }
        out: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{service}.log", "ab")  # noqa: SIM115 - kept open for the child
            self._logs.append(out)
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}.main"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=death_signal_hook(signal.SIGTERM),
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Returns once every gRPC service answers SERVING and the gateway is ready."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.processes)
        while pending:
            for service in sorted(pending):
                self._check_alive(service)
                if self._is_ready(service):
                    pending.discard(service)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"not ready after {timeout_s:.0f}s: {', '.join(sorted(pending))}"
                )
            if pending:
                time.sleep(0.1)

    def _check_alive(self, service: str) -> None:
        code = self.processes[service].poll()
        if code is not None:
            where = f"; see {self._log_dir / f'{service}.log'}" if self._log_dir else ""
            raise RuntimeError(f"{service} exited with code {code} while starting{where}")

    def _is_ready(self, service: str) -> bool:
        if service == "gateway":
            try:
                return httpx.get(f"{self.gateway_url}/readyz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        address = f"127.0.0.1:{self.ports.grpc(service)}"
        channel = (
            grpc.secure_channel(
                address,
                self._probe_identity.channel_credentials(),
                options=[("grpc.ssl_target_name_override", identity_of(service))],
            )
            if self._tls
            else grpc.insecure_channel(address)
        )
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 15.0) -> dict[str, int]:
        """SIGTERM to every service, SIGKILL to any still alive after the grace period;
        answers the exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes = {}
        for service, proc in self.processes.items():
            try:
                codes[service] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", service, grace_s)
                proc.kill()
                codes[service] = proc.wait()
        for out in self._logs:
            out.close()
        return codes
