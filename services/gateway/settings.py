from libs.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    task_service_address: str = "127.0.0.1:50051"
    # The orchestrator: WorkflowService and the agent registry.
    workflow_service_address: str = "127.0.0.1:50052"
    analysis_service_address: str = "127.0.0.1:50053"
    # Request bodies past this size are refused with 413 before they are read.
    max_body_bytes: int = 1024 * 1024 + 64 * 1024
    # Seconds a call to a service may take before the client gets 504.
    rpc_timeout_s: float = 10.0
    # Serving without authentication takes this explicit setting, and is logged loudly.
    auth_disabled: bool = False
