"""The process tree, read from /proc (Linux): which processes a launcher left behind."""

from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> its children's pids."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def children(pid: int) -> list[int]:
    return process_tree().get(pid, [])


def descendants(pid: int) -> set[int]:
    tree, found, todo = process_tree(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"
