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
    # How often the workflows' triggers and schedules are read again.
    definitions_refresh_s: float = 10.0
    # How often every registered agent's gRPC health is checked.
    agent_check_interval_s: float = 10.0
