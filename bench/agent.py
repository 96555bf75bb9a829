"""One task agent as a real process (`python -m services.task_agent.main`), started the way
`make run` starts it, on the bench's database and a Redis prefix of its own."""

import uuid
from collections.abc import Mapping
from pathlib import Path

import grpc

from bench.cpu import process_cpu_s
from dev import secrets
from dev.embedded import free_port
from dev.stack import ROOT, Ports, Stack
from libs.common.channels import open_channel
from libs.common.crypto import Keyring
from libs.common.identity import AgentIdentity
from libs.common.tokens import mint

SERVICE = "task_agent"


class AgentProcess:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_dir: Path,
        secure: bool,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`secure` False turns off mTLS, agent tokens and encryption at rest, to measure
        what they cost; `env` adds to the agent's environment."""
        self.secure = secure
        self._secrets = secrets.ensure(ROOT / ".cache/bench/secrets")
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.log_path = log_dir / f"{SERVICE}.log"
        self._stack = Stack(
            database_url,
            redis_url,
            Ports(task_agent=self.port),
            self._secrets,
            tls=secure,
            env={
                "AGENTRY_REDIS_PREFIX": self.prefix,
                "AGENTRY_GRPC_PORT": str(self.port),
                "AGENTRY_INSTANCE": f"bench-{self.prefix}",
                "AGENTRY_LOG_LEVEL": "WARNING",
                # The bench migrated its database already; the process is as in production.
                "AGENTRY_MIGRATE_ON_START": "false",
                "AGENTRY_HANDLER_MODULES": '["services.task_agent.builtins", "bench.handlers"]',
                **({} if secure else {"AGENTRY_ENCRYPTION_DISABLED": "true"}),
                **(env or {}),
            },
            log_dir=log_dir,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.aio.Channel:
        """As the gateway relaying an operator, the way the website's calls arrive."""
        if not self.secure:
            return grpc.aio.insecure_channel(self.address)
        operator = mint(
            self._secrets.jwt_private_key.read_bytes(), "bench", "operator", "agentry-gateway", 3600
        )
        gateway = AgentIdentity(self._secrets.tls_dir("gateway"), "gateway")
        return open_channel(self.address, "task-agent", gateway, operator)

    def keyring(self) -> Keyring:
        return Keyring.from_file(self._secrets.data_keys) if self.secure else Keyring.disabled()

    @property
    def pid(self) -> int:
        return self._stack.processes[SERVICE].pid

    def start(self, timeout_s: float = 60.0) -> None:
        self._stack.start_one(SERVICE)
        self._stack.wait_ready(timeout_s)

    def check_alive(self) -> None:
        code = self._stack.processes[SERVICE].poll()
        if code is not None:
            raise RuntimeError(f"the task agent exited with code {code}; see {self.log_path}")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def stop(self) -> int:
        if SERVICE not in self._stack.processes:
            return 0
        return self._stack.stop(grace_s=15.0)[SERVICE]
