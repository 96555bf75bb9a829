from typing import Self

from pydantic import Field, model_validator

from libs.common.settings import GrpcServerSettings


class OrchestratorSettings(GrpcServerSettings):
    grpc_port: int = 50052
    task_service_address: str = "127.0.0.1:50051"
    analysis_service_address: str = "127.0.0.1:50053"
    # Seconds a call to TaskService may take.
    rpc_timeout_s: float = 10.0
    # Events read per round from the durable event stream (task ends, triggers).
    event_batch: int = 500
    # How often runs nobody advanced lately are looked at, and what "lately" is.
    reconcile_interval_s: float = 5.0
    stale_run_s: float = 30.0
    # Task agents start a chain's next steps themselves, as continuations of the step
    # before (the orchestrator still records and submits them).
    step_continuations: bool = True
    # How often the workflows' triggers and schedules are read again.
    definitions_refresh_s: float = 10.0
    # How often every registered agent's gRPC health is checked.
    agent_check_interval_s: float = 10.0
    # Outbound webhook subscriptions: how many there may be, and how often each
    # orchestrator reads them again (its own changes apply at once).
    webhook_max_subscriptions: int = Field(100, ge=0)
    webhook_subscriptions_refresh_s: float = Field(5.0, gt=0)
    # The retry policy of each delivery (webhook.deliver retries 5xx, 429 and network
    # errors with full-jitter exponential backoff; after the last attempt, a dead letter).
    webhook_max_attempts: int = Field(5, ge=1, le=100)
    webhook_initial_backoff_s: float = Field(1.0, gt=0, le=86_400)
    webhook_max_backoff_s: float = Field(60.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _backoffs_in_order(self) -> Self:
        if self.webhook_max_backoff_s < self.webhook_initial_backoff_s:
            raise ValueError("webhook_max_backoff_s is below webhook_initial_backoff_s")
        return self
