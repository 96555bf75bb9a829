"""What the figures were measured on: the machine, Python, and the servers."""

import os
import platform
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.servers import Servers


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "unknown"


def describe(servers: Servers) -> dict[str, Any]:
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem_kib) / 1024**2, 1) if mem_kib.isdigit() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "redis": {"source": servers.redis_source, **_redis(servers.redis_url)},
        "postgres": {"source": servers.postgres_source, **_postgres(servers.database_url)},
    }


def _redis(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    server = str(info.get("server_name", "redis"))
    version = info.get(f"{server}_version", info.get("redis_version"))
    return {"server": server, "version": str(version)}


def _postgres(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    return {"version": settings.pop("server_version"), **settings}


def summary(machine: dict[str, Any]) -> str:
    r, p = machine["redis"], machine["postgres"]
    return (
        f"{machine['nproc']} CPU ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}, "
        f"load {'/'.join(str(x) for x in machine['load_avg_at_start'])}; "
        f"{r['server']} {r['version']} ({r['source']}); "
        f"PostgreSQL {p['version']} ({p['source']}, fsync={p['fsync']}, "
        f"synchronous_commit={p['synchronous_commit']})"
    )
