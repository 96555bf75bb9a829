"""One task agent as a real process (`python -m services.task_agent.main`), started the way
`make run` starts it, on the bench's database and a Redis prefix of its own."""

import uuid
from pathlib import Path

from bench.cpu import process_cpu_s
from dev.embedded import free_port
from dev.stack import Ports, Stack

SERVICE = "task_agent"


class AgentProcess:
    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.log_path = log_dir / f"{SERVICE}.log"
        self._stack = Stack(
            database_url,
            redis_url,
            Ports(task_agent=self.port),
            env={
                "AGENTRY_REDIS_PREFIX": self.prefix,
                "AGENTRY_GRPC_PORT": str(self.port),
                "AGENTRY_INSTANCE": f"bench-{self.prefix}",
                "AGENTRY_LOG_LEVEL": "WARNING",
                # The bench migrated its database already; the process is as in production.
                "AGENTRY_MIGRATE_ON_START": "false",
                "AGENTRY_HANDLER_MODULES": '["services.task_agent.builtins", "bench.handlers"]',
            },
            log_dir=log_dir,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

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
