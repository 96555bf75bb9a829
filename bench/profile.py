"""`--profile`: py-spy samples the task agent process while a phase runs. py-spy lives in a
throwaway virtualenv under .cache/, never in the project's."""

import logging
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from dev.embedded import death_signal_hook

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache/bench-pyspy"
RATE_HZ = 200


def ensure_pyspy() -> Path:
    exe = VENV / "bin/py-spy"
    if not exe.exists():
        log.info("installing py-spy into %s", VENV)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "py-spy"], check=True)
    return exe


class Sampler:
    """py-spy record on one process, as collapsed stacks (one line per distinct stack)."""

    def __init__(self, pid: int, output: Path) -> None:
        self._pid = pid
        self.output = output
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            str(ensure_pyspy()), "record", "--pid", str(self._pid), "--rate", str(RATE_HZ),
            "--format", "raw", "--function", "--threads", "--output", str(self.output),
        ]  # fmt: skip
        log.info("sampling pid %d into %s", self._pid, self.output)
        with open(self.output.with_suffix(".log"), "wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=death_signal_hook(signal.SIGTERM),
            )

    def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled and exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not self.output.exists():
            log.warning("py-spy wrote no profile; see %s", self.output.with_suffix(".log"))


def _frame(text: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (path/to/file.py)`, libraries shortened to their
    package, so a function's lines add up."""
    name, _, where = text.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path or "/lib/python" in path:
        path = "/".join(Path(path).parts[-2:])
    return f"{name} ({path})" if name else text


# The process's entry frames: below them the event loop runs everything.
_ENTRY = ("<module> (services/", "main (services/", "run (libs/common/service.py)")
_EVENT_LOOP = "(event loop itself: asyncio callbacks, socket reads and writes, gRPC)"


def _is_agentry(frame: str) -> bool:
    in_ours = any(f"({part}" in frame or f"/{part}" in frame for part in ("services/", "libs/"))
    return in_ours and not frame.startswith(_ENTRY)


def _greenlet_bucket(frames: list[str]) -> str:
    """SQLAlchemy's asyncio layer runs its sync half (statement compilation, parameter and
    row processing) in a greenlet, whose stack py-spy sees without the coroutine that
    awaits it; named here by what it does."""
    text = ";".join(frames)
    kind = next((k for k in ("insert", "update", "select", "delete") if f"visit_{k}" in text), "")
    if "_compile_w_cache" in text:
        what = f"compiling an {kind.upper()}" if kind else "compiling SQL"
    elif "_init_compiled" in text or "construct_params" in text:
        what = "binding parameters"
    elif "Result" in text or "fetch" in text or "Row" in text:
        what = "building result rows"
    else:
        what = "other"
    return f"(SQLAlchemy in its greenlet: {what})"


def _bucket(frames: list[str]) -> str:
    """The Agentry function a sample is charged to: the last one on the stack."""
    if frames and not frames[0].startswith(("_run_module_as_main", "<module>")):
        return _greenlet_bucket(frames)
    ours = [f for f in frames if _is_agentry(f)]
    return ours[-1] if ours else _EVENT_LOOP


def _shares(counter: Counter[str], total: int, top: int) -> list[dict[str, Any]]:
    return [
        {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
        for name, n in counter.most_common(top)
    ]


def summarize(raw: Path, wall_s: float, top: int = 30) -> dict[str, Any]:
    """Shares of the main thread's samples (the event loop: all of Agentry's Python runs
    there) per function: self time, inclusive time, and by the last Agentry function on the
    stack, which charges each library call to the Agentry code that made it."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_agentry: Counter[str] = Counter()
    main = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *rest = stack.split(";")
        if not thread.endswith(": MainThread"):
            other += count
            continue
        main += count
        frames = [_frame(f) for f in rest]
        if frames:
            self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        by_agentry[_bucket(frames)] += count
    total = max(main, 1)
    return {
        "rate_hz": RATE_HZ,
        "wall_s": round(wall_s, 2),
        "samples": main,
        "busy_share": main / (RATE_HZ * wall_s) if wall_s else 0.0,
        "other_threads_samples": other,
        "by_agentry_function": _shares(by_agentry, total, top),
        "self": _shares(self_counts, total, top),
        "inclusive": _shares(inclusive, total, top),
    }
