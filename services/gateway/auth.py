"""Who is calling and whether they may: a bearer JWT names a person or program and a role,
and the RBAC policy (libs/common/rbac.toml) decides each route. A refusal is audited. The
caller's token is relayed with every call the request makes, so the services authorise
the person too. Each principal's requests are rate-limited, across replicas."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.common.audit import AuditEntry
from libs.common.channels import Relayed, relay
from libs.common.errors import PermissionDenied, Unauthenticated
from libs.common.tokens import Principal, verify
from libs.common.tracing import trace_id
from services.gateway.rate_limit import PrincipalRateLimit

_bearer = HTTPBearer(auto_error=False, description="A JWT with a role: viewer, operator or admin.")

ANONYMOUS_ADMIN = Principal(subject="anonymous", role="admin")


async def _count(request: Request, principal: Principal) -> None:
    """Raises ResourceExhausted (429) when `principal` is over its rate limit. An app built
    without one (tests that mount a single router) has no limit."""
    limit: PrincipalRateLimit | None = getattr(request.app.state, "rate_limit", None)
    if limit is not None:
        await limit.take(principal.subject)


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    auth = request.app.state.auth
    if auth.disabled:
        await _count(request, ANONYMOUS_ADMIN)
        return ANONYMOUS_ADMIN
    route = request.scope["route"].path
    action = f"{request.method} {route}"
    principal: Principal | None = None
    try:
        if credentials is None:
            raise Unauthenticated("a bearer token is required")
        principal = verify(credentials.credentials, auth.public_key, auth.audience)
        # Before the policy: refused requests cost an audit row each, so they count too.
        await _count(request, principal)
        if not auth.policy.allows_http(principal.role, request.method, route):
            raise PermissionDenied(f"role {principal.role} may not {action}")
    except (Unauthenticated, PermissionDenied) as exc:
        await request.app.state.audit.record(
            AuditEntry(
                principal=principal.subject if principal else "unknown",
                role=principal.role if principal else "",
                action=action,
                resource=request.url.path,
                outcome="UNAUTHENTICATED"
                if isinstance(exc, Unauthenticated)
                else "PERMISSION_DENIED",
                trace_id=trace_id(),
                via="gateway",
            )
        )
        raise
    relay(Relayed(user_token=credentials.credentials))
    return principal


# Every route takes it: the policy, not the route, says which roles may pass.
Authorized = Annotated[Principal, Depends(authorize)]
