"""The audit log on the real PostgreSQL: what is appended reads back and verifies; what is
altered, removed or reordered behind its back is named by row; the table refuses changes;
appenders on many connections at once keep one gapless chain."""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from libs.common.audit import GENESIS_HASH, AuditEntry, AuditLog, Verification
from libs.common.db import create_engine
from libs.common.rbac import Policy
from libs.common.tokens import generate_keypair, mint
from services.gateway import problems
from services.gateway.app import AuthConfig
from services.gateway.routes import audit as audit_routes

AUDIENCE = "agentry-gateway"


@pytest.fixture
async def audit_log(clean_db: str) -> AsyncIterator[AuditLog]:
    engine = create_engine(clean_db, pool_size=4)
    yield AuditLog(engine)
    await engine.dispose()


def _entry(n: int, **fields: str) -> AuditEntry:
    values = {
        "principal": f"user-{n}",
        "role": "operator",
        "action": "agentry.tasks.v1.TaskService/SubmitTasks",
        "resource": f"tasks/{n}",
        "outcome": "OK",
        "trace_id": uuid.uuid4().hex,
        "via": "gateway",
        "detail": "",
    }
    values.update(fields)
    return AuditEntry(**values)


async def _append(log: AuditLog, count: int) -> None:
    for n in range(1, count + 1):
        await log.record(_entry(n))


def _as_attacker(database_url: str, *statements: str) -> None:
    """Changes the table as a superuser can: with its triggers off for the session."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


@contextmanager
def _table_owner_role(database_url: str) -> Iterator[str]:
    """A role that owns audit.entries but is no superuser, as a service's role might be."""
    role = f"audit_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA audit TO {role}")
        conn.execute(f"ALTER TABLE audit.entries OWNER TO {role}")
        try:
            yield role
        finally:
            conn.execute("ALTER TABLE audit.entries OWNER TO CURRENT_USER")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _problems(verification: Verification) -> list[tuple[int, str]]:
    return [(p.id, p.kind) for p in verification.problems]


async def test_appended_entries_read_back_in_order_and_verify(audit_log: AuditLog) -> None:
    odd = [
        _entry(1, principal="zoë 🚀", detail='{"quoted": "%s", "nl": "a\\nb"}'),
        _entry(2, role="", via="", trace_id="", detail="x" * 10_000),
        _entry(3, principal="ab", role="c"),
        _entry(4, principal="a", role="bc"),
    ]
    ids = [await audit_log.record(entry) for entry in odd]
    assert ids == [1, 2, 3, 4]

    records = await audit_log.entries()
    assert [r.id for r in records] == [1, 2, 3, 4]
    assert records[0].principal == "zoë 🚀"
    assert records[1].detail == "x" * 10_000
    assert records[0].prev_hash == GENESIS_HASH.hex()
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert all(a.at <= b.at for a, b in itertools.pairwise(records))
    assert [r.id for r in await audit_log.entries(after_id=2, limit=1)] == [3]

    verification = await audit_log.verify()
    assert verification.ok, verification.problems
    assert (verification.checked, verification.head_id) == (4, 4)
    assert verification.head_hash == records[-1].hash


async def test_an_empty_log_verifies(audit_log: AuditLog) -> None:
    verification = await audit_log.verify()
    assert verification.ok
    assert (verification.checked, verification.head_hash) == (0, GENESIS_HASH.hex())


async def test_an_altered_entry_is_named(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 6)
    _as_attacker(clean_db, "UPDATE audit.entries SET principal = 'mallory' WHERE id = 3")
    verification = await audit_log.verify()
    assert not verification.ok
    assert _problems(verification) == [(3, "altered")]


async def test_an_altered_hash_is_named_on_its_own_row(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 6)
    _as_attacker(clean_db, "UPDATE audit.entries SET hash = sha256('forged') WHERE id = 2")
    assert _problems(await audit_log.verify()) == [(2, "altered")]


async def test_a_removed_entry_is_named(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 6)
    _as_attacker(clean_db, "DELETE FROM audit.entries WHERE id IN (3, 4)")
    verification = await audit_log.verify()
    assert _problems(verification) == [(5, "removed")]
    assert "rows 3-4 are missing" in verification.problems[0].detail


async def test_a_removal_hidden_by_renumbering_is_named(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 5)
    _as_attacker(
        clean_db,
        "DELETE FROM audit.entries WHERE id = 3",
        "UPDATE audit.entries SET id = 3 WHERE id = 4",
        "UPDATE audit.entries SET id = 4 WHERE id = 5",
    )
    assert _problems(await audit_log.verify()) == [
        (3, "reordered"),
        (3, "removed"),
        (4, "reordered"),
    ]


async def test_two_swapped_entries_are_named(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 6)
    _as_attacker(
        clean_db,
        "UPDATE audit.entries SET id = 1000 WHERE id = 3",
        "UPDATE audit.entries SET id = 3 WHERE id = 4",
        "UPDATE audit.entries SET id = 4 WHERE id = 1000",
    )
    verification = await audit_log.verify()
    assert not verification.ok
    found = _problems(verification)
    assert (3, "reordered") in found
    assert (4, "reordered") in found
    assert {kind for _, kind in found} == {"reordered"}
    assert "written as row 4" in verification.problems[0].detail


async def test_tampering_across_a_page_boundary_is_found(
    audit_log: AuditLog, clean_db: str
) -> None:
    await asyncio.gather(*(audit_log.record(_entry(n)) for n in range(2100)))
    verification = await audit_log.verify()
    assert verification.ok, verification.problems
    assert (verification.checked, verification.head_id) == (2100, 2100)

    _as_attacker(
        clean_db,
        "UPDATE audit.entries SET id = 100000 WHERE id = 1000",
        "UPDATE audit.entries SET id = 1000 WHERE id = 1001",
        "UPDATE audit.entries SET id = 1001 WHERE id = 100000",
        "DELETE FROM audit.entries WHERE id = 2000",
    )
    found = _problems(await audit_log.verify())
    assert (1000, "reordered") in found
    assert (1001, "reordered") in found
    assert (2001, "removed") in found


async def test_update_delete_and_truncate_are_refused(audit_log: AuditLog, clean_db: str) -> None:
    await _append(audit_log, 3)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for statement in (
            "UPDATE audit.entries SET principal = 'mallory' WHERE id = 2",
            "DELETE FROM audit.entries WHERE id = 3",
            "DELETE FROM audit.entries WHERE false",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
    with _table_owner_role(clean_db) as role, psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("TRUNCATE audit.entries")
    verification = await audit_log.verify()
    assert verification.ok
    assert verification.checked == 3


async def test_concurrent_appenders_keep_one_gapless_chain(clean_db: str) -> None:
    # Each engine has connections of its own, as a process would; each log batches its own.
    engines = [create_engine(clean_db, pool_size=5) for _ in range(4)]
    logs = [AuditLog(engine) for engine in engines]
    calls = [
        (log, _entry(n, resource=f"tasks/{a}-{n}"))
        for a, log in enumerate(logs)
        for n in range(200)
    ]
    try:
        ids = await asyncio.gather(*(log.record(entry) for log, entry in calls))
        assert sorted(ids) == list(range(1, len(calls) + 1))
        stored = {r.id: r.resource for r in await logs[0].entries(limit=1000)}
        assert {i: entry.resource for i, (_, entry) in zip(ids, calls, strict=True)} == stored
        verification = await logs[0].verify()
        assert verification.ok, verification.problems[:5]
        assert (verification.checked, verification.head_id) == (len(calls), len(calls))
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_cancelled_caller_does_not_fail_the_others(audit_log: AuditLog) -> None:
    recording = [asyncio.create_task(audit_log.record(_entry(n))) for n in range(30)]
    await asyncio.sleep(0)
    recording[0].cancel()
    recording[15].cancel()
    results = await asyncio.gather(*recording, return_exceptions=True)
    ids = [r for r in results if isinstance(r, int)]
    assert len(ids) == 28
    assert len(set(ids)) == 28
    verification = await audit_log.verify()
    assert verification.ok, verification.problems
    assert verification.checked >= 28


async def test_text_postgres_cannot_store_is_still_recorded(audit_log: AuditLog) -> None:
    together = await asyncio.gather(
        audit_log.record(_entry(1, resource="tasks/\x00evil", detail="\udc80")),
        audit_log.record(_entry(2)),
    )
    assert sorted(together) == [1, 2]
    records = await audit_log.entries()
    assert records[0].resource == "tasks/\ufffdevil"
    assert records[0].detail == "?"
    assert (await audit_log.verify()).ok


@pytest.fixture
async def gateway(
    audit_log: AuditLog, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, bytes]]:
    """The gateway's audit routes in front of `audit_log`, under the real RBAC policy; and
    the private key that signs tokens the gateway accepts."""
    private, public = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    generate_keypair(private, public)
    app = FastAPI()
    problems.install(app)
    app.include_router(audit_routes.router)
    app.state.audit = audit_log
    app.state.auth = AuthConfig(False, public.read_bytes(), AUDIENCE, Policy.load())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client, private.read_bytes()


def _bearer(key: bytes, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(key, f'test-{role}', role, AUDIENCE, 60)}"}


async def test_an_admin_pages_through_and_verifies_the_log_over_http(
    gateway: tuple[httpx.AsyncClient, bytes], audit_log: AuditLog
) -> None:
    client, key = gateway
    await _append(audit_log, 5)
    headers = _bearer(key, "admin")
    seen: list[int] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        reply = await client.get("/v1/audit", params=params, headers=headers)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        seen += [item["id"] for item in page["items"]]
        if page["next_page_token"] is None:
            break
        params["after_id"] = page["next_page_token"]
    assert seen == [1, 2, 3, 4, 5]

    reply = await client.get("/v1/audit/verify", headers=headers)
    assert reply.status_code == 200
    head = (await audit_log.entries(after_id=4))[0].hash
    assert reply.json() == {
        "ok": True,
        "checked": 5,
        "head_id": 5,
        "head_hash": head,
        "problems": [],
    }
    too_many = await client.get("/v1/audit", params={"limit": 1001}, headers=headers)
    assert too_many.status_code == 422


async def test_the_verify_route_names_the_tampered_row(
    gateway: tuple[httpx.AsyncClient, bytes], audit_log: AuditLog, clean_db: str
) -> None:
    client, key = gateway
    await _append(audit_log, 4)
    _as_attacker(clean_db, "UPDATE audit.entries SET resource = 'tasks/elsewhere' WHERE id = 2")
    body = (await client.get("/v1/audit/verify", headers=_bearer(key, "admin"))).json()
    assert body["ok"] is False
    assert [(p["id"], p["kind"]) for p in body["problems"]] == [(2, "altered")]
    assert body["problems"][0]["problem"]


async def test_only_admins_may_read_the_audit_log_and_refusals_are_logged(
    gateway: tuple[httpx.AsyncClient, bytes], audit_log: AuditLog
) -> None:
    client, key = gateway
    for path in ("/v1/audit", "/v1/audit/verify"):
        assert (await client.get(path)).status_code == 401
        for role in ("viewer", "operator"):
            assert (await client.get(path, headers=_bearer(key, role))).status_code == 403
    refused = await audit_log.entries()
    assert [(r.outcome, r.role, r.action) for r in refused[:3]] == [
        ("UNAUTHENTICATED", "", "GET /v1/audit"),
        ("PERMISSION_DENIED", "viewer", "GET /v1/audit"),
        ("PERMISSION_DENIED", "operator", "GET /v1/audit"),
    ]
    assert len(refused) == 6
    assert (await audit_log.verify()).ok
