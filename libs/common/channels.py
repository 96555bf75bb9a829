"""Channels to our own services: mTLS with this agent's certificate, the server checked to
be the service we meant (its certificate must name it), and on every call an agent token
for that service, plus the token of the person we act for, when there is one. Every call
is traced (its context travels in the metadata) and counted."""

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from libs.common import metrics, tracing
from libs.common.call_guard import USER_TOKEN_HEADER
from libs.common.identity import AgentIdentity

S = TypeVar("S")


@dataclass(frozen=True)
class Relayed:
    """What calls made for one request carry besides our own token (its trace context
    travels through OpenTelemetry's interceptors)."""

    # The token of the person the request acts for: the callee authorises that person.
    user_token: str | None = None


_relayed: ContextVar[Relayed | None] = ContextVar("agentry_relayed", default=None)


def relay(relayed: Relayed) -> None:
    """Calls made from here to the end of the current task (one request) carry `relayed`."""
    _relayed.set(relayed)


class _Credentials:
    """Adds our token (and the relayed ones) to each call's metadata."""

    def __init__(self, identity: AgentIdentity, callee: str, user_token: str | None) -> None:
        self._identity = identity
        self._callee = callee
        self._user_token = user_token

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self._identity.token_for(self._callee)}")
        relayed = _relayed.get() or Relayed()
        user_token = self._user_token or relayed.user_token
        if user_token:
            metadata.add(USER_TOKEN_HEADER, user_token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under one kind only: one of each, sharing the credentials.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, credentials: _Credentials) -> None:
        self._credentials = credentials

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(self._credentials.details(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, credentials: _Credentials) -> None:
        self._credentials = credentials

    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(self._credentials.details(details), request)


def _balancing(address: str) -> list[tuple[str, Any]]:
    """Calls spread over every address a `dns:///<headless service>:<port>` target (or an
    `ipv4:a,b` list) resolves to, so each replica gets its share (a ClusterIP would pin one
    HTTP/2 connection to one pod). Round robin reconnects in the background with backoff and
    fails calls fast meanwhile, so the backoff is capped: a restarted replica is back within
    a second. A plain host:port keeps gRPC's pick_first, which reconnects on the next call."""
    if not address.startswith(("dns:", "ipv4:", "ipv6:")):
        return []
    return [("grpc.lb_policy_name", "round_robin"), ("grpc.max_reconnect_backoff_ms", 1000)]


def open_channel(
    address: str, callee: str, identity: AgentIdentity | None, user_token: str | None = None
) -> grpc.aio.Channel:
    """A channel to the service whose certificate names `callee` (plaintext only when
    security was turned off, `identity` None). Its calls act for the person of `user_token`,
    or for the one the current request relays."""
    observed = [*tracing.client_interceptors(), *metrics.client_interceptors()]
    if identity is None:
        return grpc.aio.insecure_channel(
            address, options=_balancing(address), interceptors=observed
        )
    credentials = _Credentials(identity, callee, user_token)
    return grpc.aio.secure_channel(
        address,
        identity.channel_credentials(),
        options=[*_balancing(address), ("grpc.ssl_target_name_override", callee)],
        interceptors=[*observed, _UnaryUnary(credentials), _UnaryStream(credentials)],
    )


class ServiceChannel:
    """A channel kept on the newest certificate: when the files rotate, the next call opens
    a new channel and the old one closes once its calls had time to finish."""

    def __init__(self, address: str, callee: str, identity: AgentIdentity | None) -> None:
        self._address = address
        self._callee = callee
        self._identity = identity
        self._generation = identity.generation if identity else ()
        self._channel = open_channel(address, callee, identity)
        self._stubs: dict[type, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        if self._identity is not None and self._identity.generation != self._generation:
            self._generation = self._identity.generation
            old = self._channel
            self._channel = open_channel(self._address, self._callee, self._identity)
            self._stubs.clear()
            closing = asyncio.create_task(old.close(grace=30.0))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        stub = self._stubs.get(stub_class)  # type: ignore[call-overload]
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self._channel)  # type: ignore[index]
        return stub  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._channel.close()
        for closing in list(self._closing):
            closing.cancel()
