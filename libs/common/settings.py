"""Settings groups shared by every service. Each service defines one settings class that
inherits these; it is built once in `main()` and passed down. No other module reads the
environment."""

import os
import socket
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Every Redis key starts with it; tests give each test its own.
    redis_prefix: str = "agentry"
    instance: str = Field(default_factory=_default_instance)
    version: str = "dev"
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    # Each service migrates its own schema at start, under an advisory lock.
    migrate_on_start: bool = True


class GrpcServerSettings(ServiceSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # Seconds a SIGTERM leaves in-flight calls and held work to finish.
    shutdown_grace_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    # The orchestrator's AgentRegistryService; empty: this agent does not register.
    registry_address: str = ""
