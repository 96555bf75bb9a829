from libs.common.settings import GrpcServerSettings


class TaskAgentSettings(GrpcServerSettings):
    grpc_port: int = 50051
    # Modules whose decorated handlers this agent serves (as `celery -A proj worker`).
    handler_modules: list[str] = [
        "services.task_agent.builtins",
        "services.task_agent.http_builtins",
        "services.task_agent.analysis_builtins",
    ]
    # Handlers running at once in this process.
    concurrency: int = 100
    # A task submitted to an agent with idle slots that serves its type starts there at
    # once, claimed as it is stored, without a trip through Redis.
    eager_execution: bool = True
    # A running task's lease; renewed every third of it while its handler runs.
    lease_s: float = 30.0
    max_payload_bytes: int = 1024 * 1024
    # Seconds a task's state stays in the Redis cache after its last change or read.
    task_cache_ttl_s: int = 60
    # Every this many reads, low priority is read first: high never starves low.
    low_priority_first_every: int = 10
    # Webhook signing secrets by name (JSON object); webhook.deliver payloads name one.
    webhook_secrets: dict[str, str] = {}
    # http.request and webhook.deliver refuse loopback, private and link-local addresses
    # unless this is set.
    http_allow_private_networks: bool = False
    # AnalysisService, which runs the analysis.* task types; empty: they fail, saying so.
    analysis_service_address: str = "127.0.0.1:50053"
    reconcile_interval_s: float = 5.0
    # A pending task still not claimed this long after its dispatch is dispatched again.
    redispatch_after_s: float = 30.0
