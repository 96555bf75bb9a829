"""AnalysisService over gRPC: protobuf in, domain call, protobuf out."""

import json
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from services.analysis.analyses import Analyses
from services.analysis.canary import Canaries, CanaryAnalysis
from services.analysis.insights import Insight, Insights
from services.analysis.reports import ErrorSignature, ReportRow, Reports


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _signature(e: ErrorSignature) -> analysis_pb2.ErrorSignature:
    return analysis_pb2.ErrorSignature(
        fingerprint=e.fingerprint,
        count=e.count,
        first_seen=_timestamp(e.first_seen),
        last_seen=_timestamp(e.last_seen),
        example=e.example,
    )


def _row(r: ReportRow) -> analysis_pb2.ReportRow:
    return analysis_pb2.ReportRow(
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
        top_errors=[_signature(e) for e in r.top_errors],
    )


def _analysis(a: CanaryAnalysis) -> analysis_pb2.CanaryAnalysis:
    return analysis_pb2.CanaryAnalysis(
        id=a.id,
        subject=a.subject,
        baseline=a.baseline,
        canary=a.canary,
        window_s=a.window_s,
        verdict=analysis_pb2.Verdict.Value(f"VERDICT_{a.verdict.value}"),
        statistics=json.dumps(a.statistics).encode(),
        created_at=_timestamp(a.created_at),
    )


def _insight(i: Insight) -> analysis_pb2.Insight:
    return analysis_pb2.Insight(
        id=i.id,
        kind=i.kind,
        severity=i.severity,
        subject=i.subject,
        window_start=_timestamp(i.window_start),
        window_end=_timestamp(i.window_end),
        evidence=json.dumps(i.evidence).encode(),
        created_at=_timestamp(i.created_at),
        state=i.state,
        resolved_at=_timestamp(i.resolved_at) if i.resolved_at else None,
    )


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(
        self, reports: Reports, canaries: Canaries, analyses: Analyses, insights: Insights
    ) -> None:
        self._reports = reports
        self._canaries = canaries
        self._analyses = analyses
        self._insights = insights

    async def GetReport(
        self, request: analysis_pb2.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.GetReportResponse:
        report = await self._reports.report(request.window_s, request.group_by, datetime.now(UTC))
        return analysis_pb2.GetReportResponse(
            start=_timestamp(report.start),
            end=_timestamp(report.end),
            rows=[_row(r) for r in report.rows],
        )

    async def ListInsights(
        self, request: analysis_pb2.ListInsightsRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.ListInsightsResponse:
        page = await self._insights.list(
            request.page_size,
            request.page_token,
            request.subject,
            request.state,
            request.window_s,
            datetime.now(UTC),
        )
        return analysis_pb2.ListInsightsResponse(
            insights=[_insight(i) for i in page.insights], next_page_token=page.next_page_token
        )

    async def AnalyzeCanary(
        self, request: analysis_pb2.AnalyzeCanaryRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.AnalyzeCanaryResponse:
        analysis = await self._canaries.analyze(
            request.subject, request.baseline, request.canary, request.window_s, datetime.now(UTC)
        )
        return analysis_pb2.AnalyzeCanaryResponse(analysis=_analysis(analysis))

    async def GetCanaryAnalysis(
        self, request: analysis_pb2.GetCanaryAnalysisRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.GetCanaryAnalysisResponse:
        analysis = await self._canaries.get(request.id)
        return analysis_pb2.GetCanaryAnalysisResponse(analysis=_analysis(analysis))

    async def ListCanaryAnalyses(
        self, request: analysis_pb2.ListCanaryAnalysesRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.ListCanaryAnalysesResponse:
        page = await self._canaries.list(request.page_size, request.page_token, request.subject)
        return analysis_pb2.ListCanaryAnalysesResponse(
            analyses=[_analysis(a) for a in page.analyses], next_page_token=page.next_page_token
        )

    async def RunAnalysis(
        self, request: analysis_pb2.RunAnalysisRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.RunAnalysisResponse:
        output = await self._analyses.run(request.kind, request.input)
        return analysis_pb2.RunAnalysisResponse(output=output)
