"""`make run`: the whole platform on one machine. Embedded Redis and PostgreSQL unless
REDIS_URL / DATABASE_URL name servers, migrations, the four services, a dev admin token.
Ctrl-C or SIGTERM stops everything it started."""

import hashlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from dev import secrets
from dev.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from dev.stack import ROOT, Ports, Stack
from libs.common.audit import upgrade_audit
from libs.common.migrations import upgrade
from libs.common.tokens import mint

log = logging.getLogger("agentry.dev")

MIGRATIONS = [ROOT / f"services/{s}/migrations" for s in ("task_agent", "orchestrator", "analysis")]


class DevSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRY_DEV_", extra="ignore")

    state_dir: Path = ROOT / ".dev"
    gateway_port: int = 8080
    task_agent_port: int = 50051
    orchestrator_port: int = 50052
    analysis_port: int = 50053
    # Prometheus /metrics of each service (Kubernetes serves them on 9464).
    task_agent_metrics_port: int = 9464
    orchestrator_metrics_port: int = 9465
    analysis_metrics_port: int = 9466
    gateway_metrics_port: int = 9467
    token_ttl_s: float = 12 * 3600
    jwt_audience: str = "agentry-gateway"


def _start_postgres(state_dir: Path) -> EmbeddedPostgres:
    """In the state dir, or (as root, when postgres's own user cannot reach it) in a
    directory under /var/tmp that it can."""
    try:
        server = EmbeddedPostgres(state_dir / "pgdata", db_name="agentry")
        server.start()
    except EmbeddedServerError as exc:
        if "cannot reach" not in str(exc):
            raise
        checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"agentry-{checkout}"
        fallback.mkdir(parents=True, exist_ok=True)
        fallback.chmod(0o755)
        log.info("postgres data in %s (%s)", fallback, exc)
        server = EmbeddedPostgres(fallback / "pgdata", db_name="agentry")
        server.start()
    return server


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = DevSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    servers: list[EmbeddedRedis | EmbeddedPostgres] = []
    stack: Stack | None = None
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = EmbeddedRedis(settings.state_dir / "redis")
            redis_server.start()
            servers.append(redis_server)
            redis_url = redis_server.url
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            pg = _start_postgres(settings.state_dir)
            servers.append(pg)
            database_url = pg.url
        upgrade_audit(database_url)
        for migrations in MIGRATIONS:
            upgrade(database_url, migrations)
        dev_secrets = secrets.ensure(settings.state_dir)
        token = mint(
            dev_secrets.jwt_private_key.read_bytes(),
            "dev-admin",
            "admin",
            settings.jwt_audience,
            settings.token_ttl_s,
        )
        ports = Ports(
            settings.task_agent_port,
            settings.orchestrator_port,
            settings.analysis_port,
            settings.gateway_port,
            settings.task_agent_metrics_port,
            settings.orchestrator_metrics_port,
            settings.analysis_metrics_port,
            settings.gateway_metrics_port,
        )
        stack = Stack(
            database_url,
            redis_url,
            ports,
            dev_secrets,
            env={
                "AGENTRY_LOG_FORMAT": "console",
                "AGENTRY_MIGRATE_ON_START": "false",
                "AGENTRY_JWT_AUDIENCE": settings.jwt_audience,
            },
        )
        stack.start()
        stack.wait_ready()
        _banner(stack, ports, redis_url, database_url, token)
        while not stop.is_set():
            exited = [name for name, p in stack.processes.items() if p.poll() is not None]
            if exited:
                log.error("%s exited; stopping everything", ", ".join(exited))
                break
            stop.wait(0.5)
    finally:
        if stack is not None:
            stack.stop()
        for server in reversed(servers):
            server.stop()
        log.info("stopped")


def _banner(stack: Stack, ports: Ports, redis_url: str, database_url: str, token: str) -> None:
    lines = [
        "",
        "Agentry is running.",
        f"  dashboard           {stack.gateway_url}/   (sign in with the token below)",
        f"  gateway (REST)      {stack.gateway_url}   (API docs: {stack.gateway_url}/docs)",
        f"  task agent (gRPC)   127.0.0.1:{ports.task_agent}",
        f"  orchestrator (gRPC) 127.0.0.1:{ports.orchestrator}",
        f"  analysis (gRPC)     127.0.0.1:{ports.analysis}",
        *(
            f"  {'metrics' if first else '':<20}{stack.metrics_url(service)}   ({service})"
            for first, service in zip(
                (True, False, False, False),
                ("task_agent", "orchestrator", "analysis", "gateway"),
                strict=True,
            )
        ),
        f"  redis               {redis_url}",
        f"  postgres            {database_url}",
        f"  dev CA, certificates and keys in {stack.secrets.root} (mTLS, tokens, data keys)",
        "",
        "Dev admin token (12 h; `agentry token --role viewer` makes others):",
        f"  export AGENTRY_TOKEN={token}",
        "",
        "Try:",
        '  curl -s -H "Authorization: Bearer $AGENTRY_TOKEN" -H "Content-Type: application/json" \\',
        f'       -d \'{{"type": "echo", "payload": {{"hello": "world"}}}}\' {stack.gateway_url}/v1/tasks',
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    sys.stdout.write("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
