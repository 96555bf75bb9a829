from pydantic import Field, SecretStr

from libs.common.settings import ServiceSettings
from services.gateway.inbound_hooks import InboundHook


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
    # Requests per second each principal (token subject) may make, counted in Redis across
    # every gateway replica, and the burst it may spend at once; 0 in either: no limit.
    rate_limit_per_s: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=0)
    # Inbound webhooks, POST /v1/hooks/{name} (JSON): {name: {"secret": <a name in
    # hook_secrets>, "workflow": <workflow to start>}} or {..., "event": <event type>}.
    inbound_hooks: dict[str, InboundHook] = Field(default_factory=dict)
    # The hooks' signing secrets (JSON: {secret name: secret}), apart from inbound_hooks so
    # that they can come from a Kubernetes Secret.
    hook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Seconds a hook delivery's timestamp may be from our clock before it is refused as
    # stale; its replays are refused for as long as it is not.
    hook_tolerance_s: float = Field(default=300.0, gt=0)
    # WebSocket /v1/events: a client gets {"type": "ping"} after this many seconds without
    # another frame, which keeps proxies from closing an idle connection.
    events_ping_interval_s: float = 20.0
    # Events a WebSocket client may fall behind before it is cut off (close 1013) rather
    # than let the gateway's memory grow; it resumes with `after`.
    events_queue_size: int = 1000
