"""/v1/canary-analyses: canary verdicts over REST.

`POST /v1/canary-analyses` compares the `canary` version's task outcomes with the `baseline`'s
over the last `window_s` seconds and answers `{"id", "verdict", ...statistics}` with a top-level
`verdict` of PASS, FAIL or INCONCLUSIVE, so it serves as an Argo Rollouts web metric:

    provider:
      web:
        method: POST
        url: https://gateway/v1/canary-analyses
        headers: [{key: Authorization, value: "Bearer <an operator's token>"}]
        body: '{"subject": "*", "baseline": "1.0", "canary": "1.1", "window_s": 900}'
        jsonPath: "{$}"
    successCondition: result.verdict == "PASS"
    failureCondition: result.verdict == "FAIL"

An INCONCLUSIVE verdict meets neither, so the rollout waits for the next measurement.
`GET /v1/canary-analyses` lists past verdicts, newest first."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from agentry.analysis.v1 import analysis_pb2
from services.gateway.auth import Authorized
from services.gateway.clients import Services

router = APIRouter(prefix="/v1", tags=["canary"])

MAX_WINDOW_S = 7 * 24 * 3600


class CanaryIn(BaseModel):
    subject: str = Field("*", description='A task type, or "*" for all of them')
    baseline: str = Field(min_length=1, description="The version the canary is compared with")
    canary: str = Field(min_length=1)
    window_s: int = Field(ge=1, le=MAX_WINDOW_S, description="Seconds back from now")


class CanaryOut(BaseModel):
    id: str
    verdict: str
    subject: str
    baseline: str
    canary: str
    window_s: int
    created_at: datetime
    cohorts: dict[str, Any]
    error_rate: dict[str, Any]
    duration: dict[str, Any]
    thresholds: dict[str, Any]
    reasons: list[str]

    @classmethod
    def from_proto(cls, a: analysis_pb2.CanaryAnalysis) -> "CanaryOut":
        return cls(
            id=a.id,
            verdict=analysis_pb2.Verdict.Name(a.verdict).removeprefix("VERDICT_"),
            subject=a.subject,
            baseline=a.baseline,
            canary=a.canary,
            window_s=a.window_s,
            created_at=a.created_at.ToDatetime(tzinfo=UTC),
            **json.loads(a.statistics),
        )


class CanaryPage(BaseModel):
    items: list[CanaryOut]
    next_page_token: str | None


@router.post("/canary-analyses", status_code=status.HTTP_201_CREATED, response_model=CanaryOut)
async def analyze_canary(request: Request, body: CanaryIn, principal: Authorized) -> CanaryOut:
    services: Services = request.app.state.services
    reply = await services.call(
        services.analysis.AnalyzeCanary,
        analysis_pb2.AnalyzeCanaryRequest(
            subject=body.subject, baseline=body.baseline, canary=body.canary, window_s=body.window_s
        ),
    )
    return CanaryOut.from_proto(reply.analysis)


@router.get("/canary-analyses", response_model=CanaryPage)
async def list_canary_analyses(
    request: Request,
    principal: Authorized,
    subject: Annotated[
        str | None, Query(max_length=200, description='A task type, or "*" for all of them')
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: Annotated[str, Query(max_length=1000)] = "",
) -> CanaryPage:
    """Past verdicts, newest first."""
    services: Services = request.app.state.services
    reply = await services.call(
        services.analysis.ListCanaryAnalyses,
        analysis_pb2.ListCanaryAnalysesRequest(
            subject=subject or "", page_size=page_size, page_token=page_token
        ),
    )
    return CanaryPage(
        items=[CanaryOut.from_proto(a) for a in reply.analyses],
        next_page_token=reply.next_page_token or None,
    )


@router.get("/canary-analyses/{analysis_id}", response_model=CanaryOut)
async def get_canary_analysis(
    request: Request, analysis_id: str, principal: Authorized
) -> CanaryOut:
    services: Services = request.app.state.services
    reply = await services.call(
        services.analysis.GetCanaryAnalysis,
        analysis_pb2.GetCanaryAnalysisRequest(id=analysis_id),
    )
    return CanaryOut.from_proto(reply.analysis)
