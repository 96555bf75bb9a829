"""/v1/insights: what the analysis service noticed (anomalies in failure rate, p95 duration
and queue lag per task type; new, jumping or concentrated failures), newest first.

An insight stays `open` while its condition lasts and for the cool-down after; then it is
`resolved`. Each opening and resolution is also an `insight.opened` / `insight.resolved`
event: a webhook subscription to `insight.opened` is an alert, one per incident."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from agentry.analysis.v1 import analysis_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services

router = APIRouter(prefix="/v1", tags=["insights"])


class InsightOut(BaseModel):
    id: str
    kind: str
    severity: str
    subject: str
    state: str
    window_start: datetime
    window_end: datetime
    evidence: dict[str, Any]
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def from_proto(cls, i: analysis_pb2.Insight) -> "InsightOut":
        return cls(
            id=i.id,
            kind=i.kind,
            severity=i.severity,
            subject=i.subject,
            state=i.state,
            window_start=i.window_start.ToDatetime(tzinfo=UTC),
            window_end=i.window_end.ToDatetime(tzinfo=UTC),
            evidence=json.loads(i.evidence) if i.evidence else {},
            created_at=i.created_at.ToDatetime(tzinfo=UTC),
            resolved_at=i.resolved_at.ToDatetime(tzinfo=UTC) if i.HasField("resolved_at") else None,
        )


class InsightPage(BaseModel):
    items: list[InsightOut]
    next_page_token: str | None


@router.get("/insights", response_model=InsightPage)
async def list_insights(
    request: Request,
    principal: Authorized,
    subject: Annotated[str | None, Query(max_length=200, description="A task type")] = None,
    state: Literal["open", "resolved"] | None = None,
    window: Annotated[
        int | None,
        Query(ge=1, le=90 * 24 * 3600, description="Only those seen in the last seconds"),
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: Annotated[str, Query(max_length=1000)] = "",
) -> InsightPage:
    services: Services = request.app.state.services
    reply = await services.call(
        services.analysis.ListInsights,
        analysis_pb2.ListInsightsRequest(
            subject=subject or "",
            state=state or "",
            window_s=window or 0,
            page_size=page_size,
            page_token=page_token,
        ),
    )
    return InsightPage(
        items=[InsightOut.from_proto(i) for i in reply.insights],
        next_page_token=reply.next_page_token or None,
    )
