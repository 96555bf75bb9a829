"""/v1/reports: the analysis service's reports over REST."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from agentry.analysis.v1 import analysis_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services

router = APIRouter(prefix="/v1", tags=["reports"])


class ErrorSignatureOut(BaseModel):
    fingerprint: str
    count: int
    first_seen: datetime
    last_seen: datetime
    example: str

    @classmethod
    def from_proto(cls, e: analysis_pb2.ErrorSignature) -> "ErrorSignatureOut":
        return cls(
            fingerprint=e.fingerprint,
            count=e.count,
            first_seen=e.first_seen.ToDatetime(tzinfo=UTC),
            last_seen=e.last_seen.ToDatetime(tzinfo=UTC),
            example=e.example,
        )


class ReportRowOut(BaseModel):
    group: str
    total: int
    succeeded: int
    failed: int
    success_rate: float
    throughput_per_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    retry_rate: float
    dead_letters: int
    top_errors: list[ErrorSignatureOut]

    @classmethod
    def from_proto(cls, r: analysis_pb2.ReportRow) -> "ReportRowOut":
        return cls(
            group=r.group,
            total=r.total,
            succeeded=r.succeeded,
            failed=r.failed,
            success_rate=r.success_rate,
            throughput_per_s=r.throughput_per_s,
            p50_s=r.p50_s,
            p95_s=r.p95_s,
            p99_s=r.p99_s,
            retry_rate=r.retry_rate,
            dead_letters=r.dead_letters,
            top_errors=[ErrorSignatureOut.from_proto(e) for e in r.top_errors],
        )


class ReportOut(BaseModel):
    start: datetime
    end: datetime
    window_s: int
    group_by: str
    rows: list[ReportRowOut]


@router.get("/reports", response_model=ReportOut)
async def get_report(
    request: Request,
    principal: Authorized,
    window: Annotated[
        int, Query(ge=1, le=90 * 24 * 3600, description="Seconds back from now")
    ] = 3600,
    group_by: Literal["type", "queue", "version"] = "type",
) -> ReportOut:
    services: Services = request.app.state.services
    reply = await services.call(
        services.analysis.GetReport,
        analysis_pb2.GetReportRequest(window_s=window, group_by=group_by),
    )
    return ReportOut(
        start=reply.start.ToDatetime(tzinfo=UTC),
        end=reply.end.ToDatetime(tzinfo=UTC),
        window_s=window,
        group_by=group_by,
        rows=[ReportRowOut.from_proto(r) for r in reply.rows],
    )
