"""The gateway's FastAPI application: REST in front of the gRPC services."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from agentry.agents.v1 import agents_pb2
from libs.common.audit import AuditLog
from libs.common.db import create_engine
from libs.common.lifecycle import AgentState, Lifecycle
from libs.common.metrics import describe_service
from libs.common.rbac import Policy
from libs.common.redis_client import Keys, create_redis
from libs.common.registration import RegistryReporter
from libs.common.security import load_security
from services.gateway import http_metrics, problems
from services.gateway.body_limit import BodyLimitMiddleware
from services.gateway.clients import Services
from services.gateway.live_events import LiveEvents
from services.gateway.rate_limit import PrincipalRateLimit
from services.gateway.routes import (
    agents,
    audit,
    canary,
    dashboard,
    events,
    hooks,
    insights,
    reports,
    tasks,
    webhook_subscriptions,
    workflows,
)
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AuthConfig:
    disabled: bool
    public_key: bytes
    audience: str
    policy: Policy


def _auth_config(settings: GatewaySettings, policy: Policy) -> AuthConfig:
    if settings.auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED: every caller is treated as admin here; the services "
            "still authorise each call unless they run with AGENTRY_TLS_DISABLED too"
        )
        return AuthConfig(True, b"", settings.jwt_audience, policy)
    if settings.jwt_public_key_file is None:
        raise SystemExit(
            "AGENTRY_JWT_PUBLIC_KEY_FILE is not set: the gateway needs the public key that "
            "verifies bearer tokens (or AGENTRY_AUTH_DISABLED=true, explicitly)"
        )
    public_key = settings.jwt_public_key_file.read_bytes()
    return AuthConfig(False, public_key, settings.jwt_audience, policy)


def create_app(settings: GatewaySettings) -> FastAPI:
    security = load_security(settings)
    auth = _auth_config(settings, security.policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            pool_size=2,
            prepared_statements=settings.database_prepared_statements,
        )
        app.state.redis = create_redis(settings.redis_url)
        app.state.rate_limit = PrincipalRateLimit(
            app.state.redis,
            settings.redis_prefix,
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
        )
        app.state.audit = AuditLog(engine)
        app.state.services = Services(
            settings.task_service_address,
            settings.workflow_service_address,
            settings.analysis_service_address,
            settings.rpc_timeout_s,
            security.identity,
        )
        # The gateway is an agent too: it registers with the orchestrator's registry.
        lifecycle = Lifecycle()
        reporter = RegistryReporter(
            settings.workflow_service_address,
            agents_pb2.Agent(
                id=f"gateway/{settings.instance}",
                role="gateway",
                instance=settings.instance,
                version=settings.version,
                address=f"{settings.http_host}:{settings.http_port}",
            ),
            state=lambda: lifecycle.state,
            load=lambda: 0.0,
            identity=security.identity,
        )
        event_redis = create_redis(settings.redis_url)
        app.state.live_events = LiveEvents(
            event_redis, Keys(settings.redis_prefix), settings.events_queue_size
        )
        app.state.event_ping_interval_s = settings.events_ping_interval_s
        reading_events = asyncio.create_task(app.state.live_events.run())
        await lifecycle.move(AgentState.INITIALIZED)
        await lifecycle.move(AgentState.ACTIVE)
        stop = asyncio.Event()
        reporting = asyncio.create_task(reporter.run(stop))
        yield
        stop.set()
        await reporting
        reading_events.cancel()
        await asyncio.wait([reading_events])
        await event_redis.aclose()
        await lifecycle.move(AgentState.TERMINATED)
        await reporter.close()
        await app.state.services.close()
        await engine.dispose()
        await app.state.redis.aclose()

    app = FastAPI(
        title="Agentry",
        version=settings.version,
        description="REST API of the Agentry agent platform.",
        lifespan=lifespan,
    )
    app.state.auth = auth
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added after the body limit, so around it: refused bodies are counted too.
    http_metrics.install(app)
    # Around the whole middleware stack: each request's span is current in its handler and
    # in the gRPC calls it makes.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/healthz$,/readyz$", exclude_spans=["receive", "send"]
    )
    describe_service("gateway", settings.version, security.identity)
    app.include_router(tasks.router)
    app.include_router(agents.router)
    app.include_router(audit.router)
    app.include_router(workflows.router)
    app.include_router(webhook_subscriptions.router)
    app.include_router(hooks.make_router(settings))
    app.include_router(events.router)
    app.include_router(reports.router)
    app.include_router(insights.router)
    app.include_router(canary.router)
    # The operators' dashboard at /, and GET /v1/me, which tells it what to offer.
    dashboard.install(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        checks = await request.app.state.services.ready()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
