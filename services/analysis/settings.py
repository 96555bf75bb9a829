from pydantic import Field

from libs.common.settings import GrpcServerSettings


class AnalysisSettings(GrpcServerSettings):
    grpc_port: int = 50053
    task_service_address: str = "127.0.0.1:50051"
    # Events read per round from the durable event stream.
    event_batch: int = 500
    # Insights: how often the detectors look at the last minutes, and how long a condition
    # must stay clear before its insight is resolved (a recurrence within it is the same
    # incident: no second alert).
    insight_interval_s: float = Field(60.0, gt=0)
    insight_cooldown_s: float = Field(900.0, ge=0)
    # History: per-minute rollups older than this become hourly (at least the detectors'
    # 72-minute look back), and everything older than the retention is deleted.
    rollup_minutes_kept_s: float = Field(2 * 86400.0, ge=2 * 3600)
    rollup_retention_s: float = Field(90 * 86400.0, ge=2 * 3600)
    retention_interval_s: float = Field(3600.0, gt=0)
    # RunAnalysis: processes that run the analyses, and how many calls may wait or run at once.
    analysis_workers: int = 2
    analysis_max_pending: int = 64
