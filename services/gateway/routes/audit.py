"""/v1/audit: reading and verifying the audit log (the RBAC policy grants it to admins)."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from libs.common.audit import MAX_PAGE, AuditLog, AuditRecord, ProblemKind
from services.gateway.auth import Authorized

router = APIRouter(prefix="/v1", tags=["audit"])


class AuditEntryOut(BaseModel):
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
    prev_hash: str
    hash: str

    @classmethod
    def from_record(cls, record: AuditRecord) -> "AuditEntryOut":
        return cls(
            id=record.id,
            at=record.at,
            principal=record.principal,
            role=record.role,
            action=record.action,
            resource=record.resource,
            outcome=record.outcome,
            trace_id=record.trace_id,
            via=record.via,
            detail=record.detail,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    # The after_id of the next page; null on the last one.
    next_page_token: str | None


class ProblemOut(BaseModel):
    id: int
    kind: ProblemKind
    problem: str


class VerificationOut(BaseModel):
    ok: bool
    checked: int
    head_id: int
    head_hash: str
    problems: list[ProblemOut]


def _audit(request: Request) -> AuditLog:
    return request.app.state.audit


@router.get("/audit", response_model=AuditPage)
async def list_audit_entries(
    request: Request,
    principal: Authorized,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    records = await _audit(request).entries(after_id=after_id, limit=limit)
    return AuditPage(
        items=[AuditEntryOut.from_record(r) for r in records],
        next_page_token=str(records[-1].id) if len(records) == limit else None,
    )


@router.get("/audit/verify", response_model=VerificationOut)
async def verify_audit_log(request: Request, principal: Authorized) -> VerificationOut:
    verification = await _audit(request).verify()
    return VerificationOut(
        ok=verification.ok,
        checked=verification.checked,
        head_id=verification.head_id,
        head_hash=verification.head_hash,
        problems=[
            ProblemOut(id=p.id, kind=p.kind, problem=p.detail) for p in verification.problems
        ],
    )
