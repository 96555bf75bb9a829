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
            "--format", "raw", "--function", "--output", str(self.output),
        ]  # fmt: skip
        log.info("sampling pid %d into %s", self._pid, self.output)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=death_signal_hook(signal.SIGTERM),
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled and exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not self.output.exists():
            log.warning("py-spy wrote no profile: %s", err.decode(errors="replace")[-2000:])


def _frame(text: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (file.py)`, so a function's lines add up."""
    name, _, where = text.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "site-packages" in path or "lib/python" in path else path
    return f"{name} ({short})" if name else text


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the samples per function, and per our-code-vs-library
    bucket, from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the thread
        total += count
        if frames:
            self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "rate_hz": RATE_HZ,
        "self": share(self_counts) if total else [],
        "inclusive": share(inclusive) if total else [],
    }
