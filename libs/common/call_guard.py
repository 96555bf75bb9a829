"""The one gate of every call to our own services: who calls (the mTLS peer certificate,
the agent token it signed, and the person it relays for), whether the RBAC policy lets
them, an audit row for every change of state and every refusal, and domain errors answered
with their status."""

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from libs.common import errors
from libs.common.audit import AuditEntry, AuditLog
from libs.common.grpc_errors import abort_for, status_for
from libs.common.identity import common_name
from libs.common.rbac import Policy
from libs.common.tokens import Principal, verify, verify_agent_token
from libs.common.tracing import trace_id as current_trace_id

log = structlog.get_logger(__name__)

USER_TOKEN_HEADER = "x-agentry-user-token"
_OWN_METHOD_PREFIX = "/agentry."
# Calls that change state: each one leaves an audit row whatever its outcome. (Agents'
# registration and heartbeats change only the registry's view of them and are not audited.)
AUDITED = frozenset(
    {
        "/agentry.tasks.v1.TaskService/SubmitTask",
        "/agentry.tasks.v1.TaskService/SubmitTasks",
        "/agentry.tasks.v1.TaskService/CancelTask",
        "/agentry.tasks.v1.TaskService/RedriveDeadLetter",
        "/agentry.tasks.v1.TaskService/PurgeDeadLetters",
        "/agentry.workflows.v1.WorkflowService/RegisterWorkflow",
        "/agentry.workflows.v1.WorkflowService/StartRun",
        "/agentry.workflows.v1.WorkflowService/CancelRun",
        "/agentry.workflows.v1.WorkflowService/RetryRun",
        "/agentry.workflows.v1.WebhookSubscriptionService/CreateSubscription",
        "/agentry.workflows.v1.WebhookSubscriptionService/DeleteSubscription",
        "/agentry.analysis.v1.AnalysisService/AnalyzeCanary",
    }
)
# Bounds on the verification caches: past this many entries they start again empty.
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Caller:
    agent: str
    agent_role: str
    user: Principal | None = None

    @property
    def principal(self) -> str:
        return self.user.subject if self.user else self.agent

    @property
    def role(self) -> str:
        return self.user.role if self.user else self.agent_role


UNKNOWN = Caller("unknown", "")

_caller: ContextVar[Caller] = ContextVar("agentry_caller", default=UNKNOWN)


def current_caller() -> Caller:
    """Who made the call being served (UNKNOWN outside one, or with security off)."""
    return _caller.get()


class Authenticator:
    """Checks the peer certificate's identity, the agent token signed with its key for this
    service, and the relayed user token. Verified tokens are remembered until they expire."""

    def __init__(
        self, audience: str, policy: Policy, user_key: bytes | None, user_audience: str
    ) -> None:
        self._audience = audience
        self._policy = policy
        self._user_key = user_key
        self._user_audience = user_audience
        self._peers: dict[bytes, tuple[str, PublicKeyTypes]] = {}
        self._agents: dict[tuple[str, bytes], tuple[float, Caller]] = {}
        self._users: dict[str, tuple[float, Principal]] = {}

    def _peer(self, pem: bytes) -> tuple[str, PublicKeyTypes]:
        peer = self._peers.get(pem)
        if peer is None:
            if len(self._peers) > _CACHE_LIMIT:
                self._peers.clear()
            cert = x509.load_pem_x509_certificate(pem)
            peer = self._peers[pem] = (common_name(pem), cert.public_key())
        return peer

    def authenticate(self, context: grpc.aio.ServicerContext, metadata: dict[str, str]) -> Caller:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise errors.Unauthenticated("no client certificate")
        pem = pems[0]
        token = metadata.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            raise errors.Unauthenticated("no agent token")
        now = time.time()
        cached = self._agents.get((token, pem))
        if cached is not None and cached[0] > now:
            caller = cached[1]
        else:
            caller = self._verify_agent(token, pem)
        user_token = metadata.get(USER_TOKEN_HEADER)
        if user_token is None:
            return caller
        if not self._policy.relays_users(caller.agent_role):
            raise errors.PermissionDenied(f"{caller.agent} may not call on behalf of people")
        return Caller(caller.agent, caller.agent_role, self._verify_user(user_token, now))

    def _verify_agent(self, token: str, pem: bytes) -> Caller:
        identity, key = self._peer(pem)
        claims = verify_agent_token(token, key, self._audience)
        if claims.subject != identity:
            raise errors.Unauthenticated(
                f"agent token names {claims.subject!r} but the certificate is {identity!r}"
            )
        role = self._policy.role_of(identity)
        if role is None or claims.role != role:
            raise errors.PermissionDenied(f"{identity} has no agent role {claims.role!r}")
        caller = Caller(identity, role)
        if len(self._agents) > _CACHE_LIMIT:
            self._agents.clear()
        self._agents[(token, pem)] = (claims.expires_at, caller)
        return caller

    def _verify_user(self, token: str, now: float) -> Principal:
        cached = self._users.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._user_key is None:
            raise errors.Unauthenticated("this service verifies no user tokens")
        principal = verify(token, self._user_key, self._user_audience)
        if len(self._users) > _CACHE_LIMIT:
            self._users.clear()
        self._users[token] = (principal.expires_at, principal)
        return principal


def _resource(request: Any, response: Any) -> str:
    """What a call acted on, for the audit log: the id it names or created."""
    for message in (response, request):
        if message is None:
            continue
        for field in (
            "task_id",
            "dead_letter_id",
            "run_id",
            "workflow_id",
            "subscription_id",
            "name",
        ):
            value = getattr(message, field, None)
            if isinstance(value, str) and value:
                return f"{field}={value}"
        for field in ("task", "run", "workflow", "subscription"):
            if field in message.DESCRIPTOR.fields_by_name and message.HasField(field):
                value = getattr(message, field)
                ident = getattr(value, "id", "") or getattr(value, "name", "")
                if ident:
                    return f"{field}={ident}"
        for field in ("tasks", "specs"):
            if field in message.DESCRIPTOR.fields_by_name:
                return f"{field}={len(getattr(message, field))}"
    return ""


def _bind_ids(request: Any) -> None:
    """The task or run a call names goes on the call's log lines (each call is served in a
    task of its own, so the binding ends with it)."""
    ids = {}
    for field in ("task_id", "run_id"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            ids[field] = value
    if ids:
        structlog.contextvars.bind_contextvars(**ids)


def _peer(context: grpc.aio.ServicerContext) -> Caller:
    """A caller not (yet) authenticated, named by its certificate if it showed one."""
    names = context.auth_context().get("x509_common_name") or [b"unknown"]
    return Caller(names[0].decode(errors="replace"), "")


class CallGuard(grpc.aio.ServerInterceptor):
    """Wraps each of our own methods (health and reflection answer as they are). With no
    authenticator (security turned off by an explicit setting) every call is let through
    as `UNKNOWN`, and still audited."""

    def __init__(
        self, authenticator: Authenticator | None, policy: Policy, audit: AuditLog | None
    ) -> None:
        self._auth = authenticator
        self._policy = policy
        self._audit = audit

    def _admit(
        self, method: str, context: grpc.aio.ServicerContext, metadata: dict[str, str]
    ) -> Caller:
        if self._auth is None:
            return UNKNOWN
        caller = self._auth.authenticate(context, metadata)
        if not self._policy.allows_rpc(caller.role, method):
            raise errors.PermissionDenied(f"role {caller.role} may not call {method.lstrip('/')}")
        return caller

    async def _record(
        self, method: str, caller: Caller, trace_id: str, outcome: str, resource: str
    ) -> None:
        if self._audit is None:
            return
        entry = AuditEntry(
            principal=caller.principal,
            role=caller.role,
            action=method.lstrip("/"),
            resource=resource,
            outcome=outcome,
            trace_id=trace_id,
            via=caller.agent if caller.user else "",
        )
        try:
            await self._audit.record(entry)
        except Exception:
            log.exception("AUDIT WRITE FAILED", **entry.__dict__)

    async def _refused(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        caller: Caller | None,
        trace_id: str,
        exc: Exception,
    ) -> None:
        """Audits what must be (a refusal, or a failed change of state), then aborts."""
        code = status_for(exc) if isinstance(exc, errors.AgentryError) else None
        refused = code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        if refused or method in AUDITED:
            outcome = code.name if code is not None else "INTERNAL"
            await self._record(method, caller or _peer(context), trace_id, outcome, "")
        await abort_for(exc, context, method)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            _bind_ids(request)
            trace_id, caller = current_trace_id(), None
            try:
                caller = self._admit(method, context, metadata)
                _caller.set(caller)
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._refused(method, context, caller, trace_id, exc)
            if method in AUDITED:
                resource = _resource(request, response)
                await self._record(method, caller or UNKNOWN, trace_id, "OK", resource)
            return response

        return unary

    def _wrap_stream(self, behavior: Callable[..., AsyncIterator[Any]], method: str) -> Any:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            _bind_ids(request)
            trace_id, caller = current_trace_id(), None
            try:
                caller = self._admit(method, context, metadata)
                _caller.set(caller)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._refused(method, context, caller, trace_id, exc)

        return stream

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_OWN_METHOD_PREFIX):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(_as_coroutine(handler.unary_unary), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(_as_async_generator(handler.unary_stream), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Nothing of ours streams requests; what cannot be guarded is not served.
        return None


def _as_coroutine(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Generated base servicers (a service not built yet) are plain functions."""
    if inspect.iscoroutinefunction(behavior):
        return behavior

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return behavior(request, context)

    return call


def _as_async_generator(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        for response in behavior(request, context):
            yield response

    return stream
