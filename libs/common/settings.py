"""Settings groups shared by every service. Each service defines one settings class that
inherits these; it is built once in `main()` and passed down. No other module reads the
environment."""

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.rbac import DEFAULT_POLICY


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Fields every service has. Environment variables carry the `AGENTRY_` prefix; the two
    URLs are also read from the conventional `DATABASE_URL` and `REDIS_URL`."""

    model_config = SettingsConfigDict(env_prefix="AGENTRY_", extra="ignore", validate_by_name=True)

    database_url: str = Field(
        validation_alias=AliasChoices("AGENTRY_DATABASE_URL", "DATABASE_URL", "database_url")
    )
    redis_url: str = Field(
        validation_alias=AliasChoices("AGENTRY_REDIS_URL", "REDIS_URL", "redis_url")
    )
    # Off behind a pooler that cannot keep prepared statements (PgBouncer before 1.21, or
    # without `max_prepared_statements`).
    database_prepared_statements: bool = True
    # Every Redis key starts with it; tests give each test its own.
    redis_prefix: str = "agentry"
    instance: str = Field(default_factory=_default_instance)
    version: str = "dev"
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    # Prometheus /metrics on this port, a listener of its own beside the service's (Kubernetes:
    # 9464), on the service's listen host; None: no metrics server.
    metrics_port: int | None = None
    # Each service migrates its own schema at start, under an advisory lock.
    migrate_on_start: bool = True
    # Keys that encrypt payloads and results at rest (JSON: {"write": kid, "keys": {kid:
    # base64}}); storing them in clear takes `encryption_disabled`, and is logged loudly.
    data_keys_file: Path | None = None
    encryption_disabled: bool = False
    # mTLS: a directory holding ca.crt, tls.crt and tls.key (a cert-manager Secret's
    # layout). Plaintext calls without agent tokens take `tls_disabled`, logged loudly.
    tls_dir: Path | None = None
    tls_disabled: bool = False
    # The public key (PEM) that verifies people's tokens: the gateway checks them, and each
    # service checks again the ones relayed to it.
    jwt_public_key_file: Path | None = None
    jwt_audience: str = "agentry-gateway"
    rbac_policy_file: Path = DEFAULT_POLICY
    # Traces are exported (OTLP/gRPC) to this collector when set; otherwise none leave the
    # process. The standard variable, as every OpenTelemetry SDK reads it.
    otlp_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "AGENTRY_OTLP_ENDPOINT", "otlp_endpoint"
        ),
    )


class GrpcServerSettings(ServiceSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # Seconds a SIGTERM leaves in-flight calls and held work to finish.
    shutdown_grace_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    # The orchestrator's AgentRegistryService; empty: this agent does not register.
    registry_address: str = ""
    # A plaintext port that answers the gRPC health service alone, for probes that present
    # no client certificate (Kubernetes' `grpc:` probes); None: no such port.
    health_port: int | None = None
