"""The operators' dashboard and `GET /v1/me`.

The dashboard is plain ES modules and one stylesheet (services/gateway/dashboard/static/),
served at `/` and under `/dashboard/` without authentication: the page holds no data, and
every call it makes carries the person's token, which the page keeps in sessionStorage.
`GET /v1/me` tells the page who the token names and which routes the RBAC policy lets that
role use, so the page offers only what the gateway would allow (the gateway still decides
each call)."""

import re
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.auth import Authorized

STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "static"
ASSETS_PATH = "/dashboard"

router = APIRouter()


class MeOut(BaseModel):
    subject: str
    role: str
    expires_at: datetime | None
    allowed: list[str] = Field(
        description='The routes this role may use, as the policy names them: "POST /v1/tasks"'
    )


@router.get("/v1/me", tags=["me"], response_model=MeOut)
async def me(request: Request, principal: Authorized) -> MeOut:
    role = request.app.state.auth.policy.roles.get(principal.role)
    return MeOut(
        subject=principal.subject,
        role=principal.role,
        expires_at=datetime.fromtimestamp(principal.expires_at, UTC)
        if principal.expires_at
        else None,
        allowed=sorted(role.http) if role else [],
    )


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# A Host header that could smuggle anything else into the policy is left out of it.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def content_security_policy(host: str) -> str:
    """Scripts, styles, images and calls from this origin only, and the event WebSocket
    (`'self'` covers ws: and wss: in CSP 3; older browsers need them named)."""
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class DashboardHeaders:
    """Security headers on the dashboard's responses (not on the API's: /docs loads its
    scripts from elsewhere)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(f"{ASSETS_PATH}/")):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = content_security_policy(host)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers.setdefault("Cache-Control", "no-cache")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="dashboard")
    app.add_middleware(DashboardHeaders)
