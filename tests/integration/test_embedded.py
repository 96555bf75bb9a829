"""Real servers from dev.embedded: round trips, clean stops, no orphans after a parent SIGKILL."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from dev.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 10.0


def _alive(pid: int) -> bool:
    """Zombies count as gone: once the parent is killed, PID 1 may take a while to reap them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _wait_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def server_dir(tmp_path: Path) -> Iterator[Path]:
    """As root, postgres runs as an unprivileged user that cannot enter pytest's 0700 basetemp."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="agentry-embedded-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_redis_round_trip_and_stop(server_dir: Path) -> None:
    with EmbeddedRedis(server_dir / "redis") as server:
        pid, port = server.pid, server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            client.set("greeting", "hello")
            assert client.get("greeting") == "hello"
            entry_id = client.xadd("events", {"kind": "created"})
            client.xgroup_create("events", "workers", id="0")
            batch = client.xreadgroup("workers", "w1", {"events": ">"}, count=10, block=1000)
            assert batch == [["events", [(entry_id, {"kind": "created"})]]]
    assert not _alive(pid)
    assert not _port_open(port)


def test_postgres_round_trip_stop_and_restart(server_dir: Path) -> None:
    data_dir = server_dir / "pgdata"
    with EmbeddedPostgres(data_dir, db_name="agentry_test") as server:
        pid, port = server.pid, server.port
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/agentry_test"
        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE TABLE agents (id serial PRIMARY KEY, name text NOT NULL)")
            conn.execute("INSERT INTO agents (name) VALUES (%s)", ["alice"])
            conn.commit()
            assert conn.execute("SELECT name FROM agents").fetchall() == [("alice",)]
    assert not _alive(pid)
    assert not _port_open(port)

    with (
        EmbeddedPostgres(data_dir, db_name="agentry_test") as server,
        psycopg.connect(server.url) as conn,
    ):
        assert conn.execute("SELECT name FROM agents").fetchall() == [("alice",)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to an unprivileged user")
def test_postgres_as_root_explains_unreachable_data_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)  # as pytest's basetemp already is
    with pytest.raises(EmbeddedServerError, match="cannot reach"):
        EmbeddedPostgres(tmp_path / "private" / "pgdata").start()


_PARENT = """
import sys, time
from dev.embedded import EmbeddedPostgres, EmbeddedRedis
base = sys.argv[1]
r = EmbeddedRedis(base + "/redis"); r.start()
p = EmbeddedPostgres(base + "/pgdata"); p.start()
print(r.pid, r.port, p.pid, p.port, flush=True)
time.sleep(600)
"""


def test_servers_die_with_sigkilled_parent(server_dir: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(server_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "parent did not report its servers in time"
        redis_pid, redis_port, pg_pid, pg_port = map(int, parent.stdout.readline().split())
        pids = [redis_pid, pg_pid, *_children(pg_pid)]
        # A client in another process must not keep postgres alive after the parent dies.
        client = psycopg.connect(
            host="127.0.0.1", port=pg_port, user="postgres", dbname="agentry", autocommit=True
        )
        assert client.execute("SELECT 1").fetchone() == (1,)
        pids += _children(pg_pid)  # now including this client's backend

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=DEADLINE)
        assert _wait_until(lambda: not any(_alive(pid) for pid in pids)), [
            p for p in pids if _alive(p)
        ]
        client.close()
        assert not _port_open(redis_port)
        assert not _port_open(pg_port)
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:  # only if the test failed: do not leak servers into the machine
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
