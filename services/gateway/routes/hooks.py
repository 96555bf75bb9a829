"""/v1/hooks/{name}: inbound webhooks. A hook is authenticated by its signature, not by a
bearer token, so the RBAC policy has no say in who may call it; what it does (start its
workflow, publish its event) it does on the gateway's own authority. Every accepted or
refused delivery of a configured hook is audited; a name no hook has is a 404 like any
unknown path, and not audited (anyone could fill the log with made-up names)."""

import time
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Request, status
from pydantic import BaseModel
from redis.exceptions import RedisError

from agentry.workflows.v1 import workflows_pb2
from libs.common.audit import AuditEntry
from libs.common.errors import AgentryError, Unavailable
from libs.common.events import EventBus
from libs.common.grpc_errors import status_for
from libs.common.redis_client import Keys
from libs.common.tracing import trace_id
from services.gateway.clients import Services
from services.gateway.inbound_hooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Hook,
    RedisSeen,
    ReplayGuard,
    Signed,
    authenticate,
    configured_hooks,
    find,
    parse_json,
)
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

ACTION = "POST /v1/hooks/{name}"


class HookAccepted(BaseModel):
    """What the delivery did: the run it started (the same one for a retried delivery)
    or the event it published."""

    run_id: str | None = None
    event_id: str | None = None


_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_400_BAD_REQUEST: {"description": "The body is not JSON"},
    status.HTTP_401_UNAUTHORIZED: {
        "description": "A signature header is missing or wrong, or the timestamp is stale"
    },
    status.HTTP_404_NOT_FOUND: {"description": "No hook of that name"},
    status.HTTP_409_CONFLICT: {"description": "This delivery was accepted already (a replay)"},
}
_BODY = {
    "requestBody": {
        "required": True,
        "description": "Any JSON, signed exactly as sent.",
        "content": {"application/json": {"schema": {}}},
    }
}


def make_router(settings: GatewaySettings) -> APIRouter:
    """The route, for the hooks `settings` configure; a hook without its secret stops the
    start."""
    try:
        hooks = configured_hooks(
            settings.inbound_hooks,
            {name: secret.get_secret_value() for name, secret in settings.hook_secrets.items()},
        )
    except ValueError as exc:
        raise SystemExit(f"AGENTRY_INBOUND_HOOKS: {exc} (AGENTRY_HOOK_SECRETS)") from None
    tolerance_s = settings.hook_tolerance_s
    keys = Keys(settings.redis_prefix)
    source = f"gateway/{settings.instance}"
    router = APIRouter(prefix="/v1", tags=["hooks"])

    @router.post(
        "/hooks/{name}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=HookAccepted,
        response_model_exclude_none=True,
        responses=_RESPONSES,
        openapi_extra=_BODY,
        include_in_schema=True,
    )
    async def receive_hook(
        request: Request,
        name: str,
        signature: Annotated[
            str | None,
            Header(
                alias=SIGNATURE_HEADER,
                description='"v1=" and the hex HMAC-SHA256 of "<timestamp>." + body',
            ),
        ] = None,
        timestamp: Annotated[
            str | None, Header(alias=TIMESTAMP_HEADER, description="Unix time in seconds")
        ] = None,
    ) -> HookAccepted:
        """Starts the hook's workflow with the body as input, or publishes the body as the
        hook's event. Signed like Agentry's own outbound webhooks (`webhook.deliver`)."""
        hook = find(hooks, name)
        await _count(request, hook)
        audit = _Audit(request, hook, trace_id())
        raw = await request.body()
        now = time.time()
        replays = ReplayGuard(
            RedisSeen(request.app.state.redis, settings.redis_prefix), tolerance_s
        )
        try:
            signed = authenticate(hook, timestamp, signature, raw, tolerance_s, now)
            body = parse_json(raw)
            await _claim(replays, hook, signed, now)
        except AgentryError as exc:
            await audit.refused(exc, request.url.path)
            raise
        try:
            if hook.workflow is not None:
                accepted = await _start_run(request, hook, hook.workflow, signed, raw)
            else:
                bus = EventBus(request.app.state.redis, keys, source)
                accepted = await _publish(bus, hook, body)
        except Exception as exc:
            await _release(replays, hook, signed)
            await audit.refused(exc, request.url.path)
            raise
        await audit.accepted(
            f"run_id={accepted.run_id}" if accepted.run_id else f"event_id={accepted.event_id}"
        )
        return accepted

    return router


async def _count(request: Request, hook: Hook) -> None:
    """Each hook has its principal's rate limit: refusals cost an audit row each."""
    limit = getattr(request.app.state, "rate_limit", None)
    if limit is not None:
        await limit.take(f"hook:{hook.name}")


async def _claim(replays: ReplayGuard, hook: Hook, signed: Signed, now: float) -> None:
    """Without Redis a replay cannot be told apart: 503, and the sender retries later."""
    try:
        await replays.claim(hook, signed, now)
    except RedisError as exc:
        log.warning("hook refused: Redis failed", hook=hook.name, exc_info=True)
        raise Unavailable("cannot check this delivery for replays now; retry later") from exc


async def _release(replays: ReplayGuard, hook: Hook, signed: Signed) -> None:
    try:
        await replays.release(hook, signed)
    except RedisError:
        # The sender's retry is refused as a replay until the mark expires; nothing worse.
        log.warning("hook delivery not forgotten: Redis failed", hook=hook.name, exc_info=True)


async def _start_run(
    request: Request, hook: Hook, workflow: str, signed: Signed, raw: bytes
) -> HookAccepted:
    services: Services = request.app.state.services
    reply = await services.call(
        services.workflows.StartRun,
        workflows_pb2.StartRunRequest(
            workflow=workflow,
            input=raw,
            # A sender retrying after a lost answer sends the same signature: the same run.
            idempotency_key=f"hook:{hook.name}:{signed.signature}",
        ),
    )
    return HookAccepted(run_id=reply.run.id)


async def _publish(bus: EventBus, hook: Hook, body: Any) -> HookAccepted:
    assert hook.event is not None
    try:
        event = await bus.publish(hook.event, subject=f"hook/{hook.name}", data=body)
    except RedisError as exc:
        log.warning("hook event not published: Redis failed", hook=hook.name, exc_info=True)
        raise Unavailable("the event stream is unavailable; retry later") from exc
    return HookAccepted(event_id=event.id)


class _Audit:
    def __init__(self, request: Request, hook: Hook, trace_id: str) -> None:
        self._request = request
        self._hook = hook
        self._trace_id = trace_id

    async def accepted(self, resource: str) -> None:
        await self._record(resource, "OK", "")

    async def refused(self, exc: Exception, resource: str) -> None:
        if isinstance(exc, AgentryError):
            await self._record(resource, status_for(exc).name, str(exc))
        else:
            await self._record(resource, "INTERNAL", "")

    async def _record(self, resource: str, outcome: str, detail: str) -> None:
        entry = AuditEntry(
            principal=f"hook:{self._hook.name}",
            role="hook",
            action=ACTION,
            resource=resource,
            outcome=outcome,
            trace_id=self._trace_id,
            via="gateway",
            detail=detail,
        )
        try:
            await self._request.app.state.audit.record(entry)
        except Exception:
            # The delivery's fate is decided already; the sender must not retry for this.
            log.exception("AUDIT WRITE FAILED", **entry.__dict__)
