"""The audit log: who did what, relayed by which agent, with what outcome. Every service
writes it through one call, `AuditLog.record`; nothing updates or deletes it.

Tamper evidence. Each entry stores the SHA-256 of its content and of the previous entry's
hash, so an entry altered, removed or moved after the fact breaks the chain, and `verify`
names the row. The hashed bytes (version 1) are, integers big-endian:

    b"agentry.audit.v1" | int64 id | int64 `at` in microseconds since the Unix epoch
    | for principal, role, action, resource, outcome, trace_id, via, detail:
        int32 byte length | UTF-8 bytes
    | prev_hash (32 bytes; zeros for entry 1)

The database computes it when appending (`audit.digest`) and `_digest` below recomputes it
when verifying: a length-prefixed encoding, not JSON, because both sides must produce the
same bytes and PostgreSQL and Python format JSON differently.

Appends. `audit.append` takes one transaction-level advisory lock shared by every process,
reads the head and inserts the next entries (ids from head + 1: no sequence, so no gaps),
all in one statement on the server: an append costs one round trip, and the lock is never
held across one. As each append holds the lock until its commit, the entries a process
records while one of its appends is in flight go together in its next: one commit for all.

What the chain cannot show on its own:
- Removing the newest entries leaves a valid, shorter chain, and so does rewriting an entry
  and recomputing every hash after it (the hash has no key). `verify` returns the head (id
  and hash): record it outside this database (another store, a ticket, a signed log line)
  and check later that the entry with that id still has that hash.
- A trigger refuses UPDATE, DELETE and TRUNCATE, but the table's owner or a superuser can
  disable it (and TRUNCATE is left to superusers, so that tests and dev can reset the log):
  the services' database role should be neither.
"""

import asyncio
import hashlib
import struct
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.errors import InvalidArgument
from libs.common.migrations import upgrade

GENESIS_HASH = bytes(32)
MAX_PAGE = 1000
MAX_PROBLEMS = 1000
# How far from its id `verify` looks for an entry that was moved; one moved farther shows
# as altered rather than reordered.
_NEARBY = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FORMAT = b"agentry.audit.v1"
_TEXT_FIELDS = ("principal", "role", "action", "resource", "outcome", "trace_id", "via", "detail")

_APPEND = f"SELECT audit.append({', '.join(['%s::text[]'] * len(_TEXT_FIELDS))})"
_PAGE = (
    f"SELECT id, at, {', '.join(_TEXT_FIELDS)}, prev_hash, hash FROM audit.entries"
    " WHERE id > %s ORDER BY id LIMIT %s"
)

ProblemKind = Literal["altered", "removed", "reordered"]


@dataclass(frozen=True)
class AuditEntry:
    principal: str
    role: str
    # What was attempted: an RPC's full name or "METHOD /path".
    action: str
    resource: str
    # "OK" or the status code's name: "PERMISSION_DENIED", "INVALID_ARGUMENT", ...
    outcome: str
    trace_id: str = ""
    # The agent that relayed the call ("gateway"), or "" for a direct call.
    via: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    principal: str
    role: str
    action: str
    resource: str
    outcome: str
    trace_id: str
    via: str
    detail: str
    prev_hash: str  # hex
    hash: str  # hex


@dataclass(frozen=True)
class Problem:
    id: int
    kind: ProblemKind
    detail: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    # The newest entry: anchor (head_id, head_hash) elsewhere to detect a cut tail later.
    head_id: int
    head_hash: str  # hex; zeros while the log is empty
    problems: list[Problem]


def upgrade_audit(database_url: str) -> None:
    upgrade(database_url, Path(__file__).parent / "audit_migrations")


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        # One statement per call, its own transaction: no BEGIN/COMMIT round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pending: list[tuple[AuditEntry, asyncio.Future[int]]] = []
        self._one_append_at_a_time = asyncio.Lock()
        self._appends: set[asyncio.Task[None]] = set()

    async def record(self, entry: AuditEntry) -> int:
        """Appends `entry` and answers its id. Entries recorded while this process has an
        append in flight go together in its next one: appends are serialized up to their
        commit, so under load one commit (one WAL flush) serves many entries."""
        written = asyncio.get_running_loop().create_future()
        self._pending.append((entry, written))
        try:
            async with self._one_append_at_a_time:
                if not written.done() and self._pending:
                    batch, self._pending = self._pending, []
                    # Shielded: the others of the batch keep their append when this caller
                    # is cancelled; its own entry may still be written.
                    await asyncio.shield(self._start(self._append(batch)))
            return await written
        except asyncio.CancelledError:
            # Nobody waits for it any more: the append leaves it alone.
            written.cancel()
            raise

    def _start(self, append: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(append)
        self._appends.add(task)
        task.add_done_callback(self._appends.discard)
        return task

    async def _append(self, batch: list[tuple[AuditEntry, asyncio.Future[int]]]) -> None:
        columns = [[_storable(getattr(entry, name)) for entry, _ in batch] for name in _TEXT_FIELDS]
        try:
            rows = await self._fetch(_APPEND, columns)
        except Exception as exc:
            # Every caller of the batch sees the failure.
            for _, written in batch:
                if not written.done():
                    written.set_exception(exc)
            return
        first_id = rows[0][0]
        for offset, (_, written) in enumerate(batch):
            if not written.done():
                written.set_result(first_id + offset)

    async def entries(self, *, after_id: int = 0, limit: int = 100) -> list[AuditRecord]:
        """The entries after `after_id`, oldest first."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}")
        return [_record(row) for row in await self._fetch(_PAGE, [after_id, limit])]

    async def verify(self) -> Verification:
        """Walks the whole chain, a page at a time, and names the rows found wrong (the first
        MAX_PROBLEMS of them): "altered" when a row's hash does not match its content,
        "reordered" when its content is intact but was written under another id or follows
        another entry, "removed" when ids are missing before it or the entry it followed is
        gone. Each page is read with the next _NEARBY rows too, so that a moved entry is
        recognised across page boundaries."""
        problems: list[Problem] = []
        checked = 0
        previous: Any = None
        behind: deque[Any] = deque(maxlen=_NEARBY)
        after = 0
        while True:
            rows = await self._fetch(_PAGE, [after, MAX_PAGE + _NEARBY])
            last_page = len(rows) < MAX_PAGE + _NEARBY
            page = rows if last_page else rows[:MAX_PAGE]
            for i, row in enumerate(page):
                nearby = [*behind, *rows[i + 1 : i + 1 + _NEARBY]]
                if len(problems) < MAX_PROBLEMS:
                    problems.extend(_check(row, previous, nearby))
                behind.append(row)
                previous = row
            checked += len(page)
            if last_page:
                break
            after = page[-1].id
        return Verification(
            ok=not problems,
            checked=checked,
            head_id=previous.id if previous else 0,
            head_hash=(previous.hash if previous else GENESIS_HASH).hex(),
            problems=problems[:MAX_PROBLEMS],
        )

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """On the psycopg connection itself: SQLAlchemy's per-statement work would be most
        of an append's time."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
            async with driver.cursor(row_factory=namedtuple_row) as cursor:
                await cursor.execute(sql, params)
                return await cursor.fetchall()


def _storable(value: str) -> str:
    """`value` as PostgreSQL text can hold it: one caller's NUL or lone surrogate must not
    fail the batch it shares, nor keep the entry out of the log."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()


def _check(row: Any, previous: Any, nearby: Sequence[Any]) -> list[Problem]:
    """What is wrong with `row`, which follows `previous` (None for the first row) in id
    order; `nearby` are the rows within _NEARBY ids of it."""
    problems: list[Problem] = []
    written_as = row.id if _digest(row, row.id) == row.hash else _original_id(row)
    if written_as is None:
        problems.append(Problem(row.id, "altered", "its hash does not match its content"))
    elif written_as != row.id:
        problems.append(
            Problem(row.id, "reordered", f"it holds the entry written as row {written_as}")
        )
    expected_id = previous.id + 1 if previous else 1
    if row.id != expected_id:
        gap = (
            f"row {expected_id} is"
            if row.id == expected_id + 1
            else f"rows {expected_id}-{row.id - 1} are"
        )
        problems.append(Problem(row.id, "removed", f"{gap} missing before it"))
    elif written_as is not None and not _follows(row, previous):
        # An altered row's prev_hash proves nothing; it is reported already.
        follows = next((n.id for n in nearby if n.hash == row.prev_hash), None)
        if follows is None:
            problems.append(Problem(row.id, "removed", "the entry it followed is missing"))
        elif written_as == row.id:
            before = previous.id if previous else "none"
            problems.append(Problem(row.id, "reordered", f"it follows row {follows}, not {before}"))
    return problems


def _follows(row: Any, previous: Any) -> bool:
    if previous is None:
        return bool(row.prev_hash == GENESIS_HASH)
    # The previous row's own hash column may be what was altered: it is reported there.
    return row.prev_hash in (previous.hash, _digest(previous, previous.id))


def _original_id(row: Any) -> int | None:
    """The id under which `row`'s content hashes to its stored hash, if one is near."""
    candidates = range(max(1, row.id - _NEARBY), row.id + _NEARBY + 1)
    return next((i for i in candidates if i != row.id and _digest(row, i) == row.hash), None)


def _digest(row: Any, entry_id: int) -> bytes:
    at_us = (row.at - _EPOCH) // timedelta(microseconds=1)
    digest = hashlib.sha256(_FORMAT)
    digest.update(struct.pack(">qq", entry_id, at_us))
    for name in _TEXT_FIELDS:
        value = getattr(row, name).encode()
        digest.update(struct.pack(">i", len(value)))
        digest.update(value)
    digest.update(row.prev_hash)
    return digest.digest()


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        principal=row.principal,
        role=row.role,
        action=row.action,
        resource=row.resource,
        outcome=row.outcome,
        trace_id=row.trace_id,
        via=row.via,
        detail=row.detail,
        prev_hash=row.prev_hash.hex(),
        hash=row.hash.hex(),
    )
