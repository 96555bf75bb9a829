"""CPU time per party (the agent, the bench client, PostgreSQL, Redis) over a phase: on a
2-core machine it tells whether the agent's one core is the limit."""

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_SERVER_NAMES = {"postgres": "postgres", "redis-server": "redis", "valkey-server": "redis"}


def process_cpu_s(pid: int) -> float:
    """User + system seconds of a process, all its threads included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _servers_cpu_s() -> dict[str, float]:
    """Every postgres and redis/valkey process on the machine (ours or not: on a shared
    server this counts other clients' work too)."""
    totals = {"postgres": 0.0, "redis": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        party = _SERVER_NAMES.get(comm)
        if party:
            totals[party] += process_cpu_s(int(entry.name))
    return totals


@dataclass
class CpuMeter:
    agent_pid: int

    def __post_init__(self) -> None:
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        times = os.times()
        return {
            "agent": process_cpu_s(self.agent_pid),
            "bench_client": times.user + times.system,
            **_servers_cpu_s(),
        }

    def seconds(self) -> dict[str, float]:
        """CPU seconds per party since this meter was made (servers that restarted or
        backends that exited meanwhile make theirs an underestimate)."""
        now = self._read()
        return {k: round(max(0.0, now[k] - self._start[k]), 2) for k in now}
