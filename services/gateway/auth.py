"""Who is calling: a bearer JWT naming a principal and a role. Roles are ordered:
viewer (read) < operator (submit, cancel, redrive) < admin (everything)."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.common.errors import PermissionDenied, Unauthenticated
from libs.common.tokens import ROLES, Principal, verify

_RANK = {role: rank for rank, role in enumerate(ROLES)}
_bearer = HTTPBearer(auto_error=False, description="A JWT with a role: viewer, operator or admin.")

ANONYMOUS_ADMIN = Principal(subject="anonymous", role="admin")


def require(role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        auth = request.app.state.auth
        if auth.disabled:
            return ANONYMOUS_ADMIN
        if credentials is None:
            raise Unauthenticated("a bearer token is required")
        principal = verify(credentials.credentials, auth.public_key, auth.audience)
        if _RANK[principal.role] < _RANK[role]:
            raise PermissionDenied(f"role {principal.role} may not do this; it takes {role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
