"""The gateway's FastAPI application: REST in front of the gRPC services."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentry.agents.v1 import agents_pb2
from libs.common.lifecycle import AgentState, Lifecycle
from libs.common.registration import RegistryReporter
from services.gateway import problems
from services.gateway.body_limit import BodyLimitMiddleware
from services.gateway.clients import Services
from services.gateway.routes import agents, tasks
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AuthConfig:
    disabled: bool
    public_key: bytes
    audience: str


def _auth_config(settings: GatewaySettings) -> AuthConfig:
    if settings.auth_disabled:
        log.warning("AUTHENTICATION IS DISABLED: every caller is treated as admin")
        return AuthConfig(True, b"", settings.jwt_audience)
    if settings.jwt_public_key_file is None:
        raise SystemExit(
            "AGENTRY_JWT_PUBLIC_KEY_FILE is not set: the gateway needs the public key that "
            "verifies bearer tokens (or AGENTRY_AUTH_DISABLED=true, explicitly)"
        )
    return AuthConfig(False, settings.jwt_public_key_file.read_bytes(), settings.jwt_audience)


def create_app(settings: GatewaySettings) -> FastAPI:
    auth = _auth_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services(
            settings.task_service_address,
            settings.workflow_service_address,
            settings.rpc_timeout_s,
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
        )
        await lifecycle.move(AgentState.INITIALIZED)
        await lifecycle.move(AgentState.ACTIVE)
        stop = asyncio.Event()
        reporting = asyncio.create_task(reporter.run(stop))
        yield
        stop.set()
        await reporting
        await lifecycle.move(AgentState.TERMINATED)
        await reporter.close()
        await app.state.services.close()

    app = FastAPI(
        title="Agentry",
        version=settings.version,
        description="REST API of the Agentry agent platform.",
        lifespan=lifespan,
    )
    app.state.auth = auth
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(tasks.router)
    app.include_router(agents.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        checks = await request.app.state.services.ready()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
