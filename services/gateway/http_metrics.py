"""The gateway's Prometheus metrics: requests by route template (never the raw path, which
holds ids), method and status, their durations, the open WebSockets. They are served with
the rest of the process's on AGENTRY_METRICS_PORT (main.py), never on the public HTTP port."""

import time
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "agentry_http_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "agentry_http_request_duration_seconds",
    "Time the gateway took to answer an HTTP request, by route template and method.",
    ["route", "method"],
)
WEBSOCKETS = Gauge("agentry_websocket_connections", "WebSocket connections open now.")
# What requests that matched no route are counted under.
UNMATCHED = "unmatched"


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", UNMATCHED)


class HttpMetrics:
    """Plain ASGI middleware (a BaseHTTPMiddleware would cost a task per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, method = _route(scope), scope["method"]
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Counts a connection from its accept to its end (refused ones never count)."""
        accepted = False

        async def sending(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                WEBSOCKETS.inc()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if accepted:
                WEBSOCKETS.dec()


def install(app: FastAPI) -> None:
    app.add_middleware(HttpMetrics)
