"""AnalysisService over gRPC: protobuf in, domain call, protobuf out. The RPCs not built yet
are the generated base's, which answer UNIMPLEMENTED."""

import json
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from services.analysis.canary import Canaries, CanaryAnalysis
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


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(self, reports: Reports, canaries: Canaries) -> None:
        self._reports = reports
        self._canaries = canaries

    async def GetReport(
        self, request: analysis_pb2.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.GetReportResponse:
        report = await self._reports.report(request.window_s, request.group_by, datetime.now(UTC))
        return analysis_pb2.GetReportResponse(
            start=_timestamp(report.start),
            end=_timestamp(report.end),
            rows=[_row(r) for r in report.rows],
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
