"""CPU time per party over a phase: the agent, the bench client, our PostgreSQL server (its
postmaster and backends), our Redis server, and everything else on the machine. On a 2-core
machine it tells whether the agent's one core is the limit, and whether something else (a
test suite running beside the bench) took CPU meanwhile."""

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system seconds of a process, all its threads included; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _tree_cpu_s(root: int) -> dict[int, float]:
    """The process and its children (PostgreSQL's postmaster and backends), per pid."""
    found = {root: process_cpu_s(root)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == root:
            found[int(entry.name)] = process_cpu_s(int(entry.name))
    return found


def _machine_busy_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """Starts counting when made; `seconds()` answers the CPU seconds since, per party: each
    named process with its children (a postmaster and its backends, a Celery worker and its
    pool), this bench process with the children it waited for, and everything else on the
    machine. A party whose pid is None (a server on another machine) counts under "other"."""

    def __init__(self, parties: dict[str, int | None]) -> None:
        self._roots = {name: pid for name, pid in parties.items() if pid}
        self._trees = {name: _tree_cpu_s(pid) for name, pid in self._roots.items()}
        self._client = _own_cpu_s()
        self._machine = _machine_busy_s()

    def seconds(self) -> dict[str, float]:
        used = {}
        for name, root in self._roots.items():
            before = self._trees[name]
            # Children that started meanwhile count from zero; ones that ended are lost.
            used[name] = sum(
                max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in _tree_cpu_s(root).items()
            )
        used["bench_client"] = max(0.0, _own_cpu_s() - self._client)
        machine = max(0.0, _machine_busy_s() - self._machine)
        used["other"] = max(0.0, machine - sum(used.values()))
        return {k: round(v, 2) for k, v in used.items()}


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
