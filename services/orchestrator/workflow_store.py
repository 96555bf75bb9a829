"""Workflow definitions in PostgreSQL (schema `orchestrator`): each registration of a name
is a new version; a run keeps the version it started with."""

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True)
class WorkflowRecord:
    name: str
    version: int
    definition: bytes
    created_at: datetime


class WorkflowStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_workflow(self, name: str, definition: bytes) -> WorkflowRecord:
        """A new version: one more than the latest (serialized per name by a lock)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext('workflow:' || :name))"),
                {"name": name},
            )
            row = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO orchestrator.workflows (name, version, definition)"
                        " SELECT :name, coalesce(max(version), 0) + 1, :definition"
                        " FROM orchestrator.workflows WHERE name = :name"
                        " RETURNING name, version, definition, created_at"
                    ),
                    {"name": name, "definition": definition},
                )
            ).one()
        return WorkflowRecord(row.name, row.version, bytes(row.definition), row.created_at)

    async def workflow_names(self) -> set[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT DISTINCT name FROM orchestrator.workflows"))
            return {row.name for row in rows}

    async def workflow(self, name: str, version: int = 0) -> WorkflowRecord | None:
        query = (
            "SELECT name, version, definition, created_at FROM orchestrator.workflows"
            " WHERE name = :name AND (:version = 0 OR version = :version)"
            " ORDER BY version DESC LIMIT 1"
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.text(query), {"name": name, "version": version})).first()
        return (
            WorkflowRecord(row.name, row.version, bytes(row.definition), row.created_at)
            if row
            else None
        )

    async def workflows_asked(
        self, asked: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], WorkflowRecord]:
        """The workflows of (name, version) pairs, version 0 meaning the latest, in one
        query; a pair that names none is left out."""
        if not asked:
            return {}
        names, versions = zip(*asked, strict=True)
        query = (
            "SELECT DISTINCT ON (q.name, q.version) q.version AS asked, w.name, w.version,"
            " w.definition, w.created_at FROM orchestrator.workflows w"
            " JOIN unnest(CAST(:names AS text[]), CAST(:versions AS int[])) AS q(name, version)"
            " ON w.name = q.name AND (q.version = 0 OR w.version = q.version)"
            " ORDER BY q.name, q.version, w.version DESC"
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.text(query), {"names": list(names), "versions": list(versions)}
            )
            return {
                (r.name, r.asked): WorkflowRecord(
                    r.name, r.version, bytes(r.definition), r.created_at
                )
                for r in rows
            }

    async def latest_workflows(self, after: str, limit: int) -> list[WorkflowRecord]:
        query = (
            "SELECT DISTINCT ON (name) name, version, definition, created_at"
            " FROM orchestrator.workflows WHERE name > :after"
            " ORDER BY name, version DESC LIMIT :limit"
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.text(query), {"after": after, "limit": limit})
            return [
                WorkflowRecord(r.name, r.version, bytes(r.definition), r.created_at) for r in rows
            ]
