"""Prometheus metrics every service has: what it is (build, certificate), the calls it serves
and makes (RED metrics by gRPC method and code), and how far its event consumer is behind.
The catalogue of every metric is docs/metrics.md; labels stay bounded (methods, codes,
types, queues; never ids)."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from cryptography import x509
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from libs.common.events import EventConsumer
from libs.common.identity import AgentIdentity
from libs.common.waiting import pause

# Seconds between two readings of a consumer group's standing (one XINFO GROUPS).
STANDING_EVERY_S = 5.0

BUILD_INFO = Gauge(
    "agentry_build_info", "Always 1: the service and version running.", ["service", "version"]
)
_GRPC_LABELS = ["grpc_service", "grpc_method"]
SERVER_HANDLED = Counter(
    "agentry_grpc_server_handled_total",
    "gRPC calls served, by method and status code.",
    [*_GRPC_LABELS, "grpc_code"],
)
SERVER_SECONDS = Histogram(
    "agentry_grpc_server_handling_seconds",
    "Time to serve a gRPC call (a stream: until it ended).",
    _GRPC_LABELS,
)
CLIENT_HANDLED = Counter(
    "agentry_grpc_client_handled_total",
    "gRPC calls made to our services, by method and status code.",
    [*_GRPC_LABELS, "grpc_code"],
)
CLIENT_SECONDS = Histogram(
    "agentry_grpc_client_handling_seconds",
    "Time a gRPC call made to our services took (a stream: until it ended).",
    _GRPC_LABELS,
)
CONSUMER_LAG = Gauge(
    "agentry_event_consumer_lag",
    "Entries of the event stream not yet delivered to the consumer group.",
    ["group"],
)
CONSUMER_PENDING = Gauge(
    "agentry_event_consumer_pending",
    "Entries delivered to the consumer group and not yet acknowledged.",
    ["group"],
)


def serve_metrics(port: int, host: str) -> None:
    """/metrics on its own port, served from a daemon thread: a scrape never waits on the
    event loop, nor the loop on a scrape."""
    start_http_server(port, host)


class _CertificateExpiry(Collector):
    """The notAfter of the certificate the service presents, read at scrape time: a rotated
    certificate shows at the next scrape. Nothing without TLS."""

    identity: AgentIdentity | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.identity is None:
            return
        cert = x509.load_pem_x509_certificate(self.identity.material().cert)
        yield GaugeMetricFamily(
            "agentry_certificate_expiry_timestamp_seconds",
            "When the service's TLS certificate expires (Unix time).",
            value=cert.not_valid_after_utc.timestamp(),
        )


_CERTIFICATE_EXPIRY = _CertificateExpiry()
REGISTRY.register(_CERTIFICATE_EXPIRY)


def describe_service(service: str, version: str, identity: AgentIdentity | None) -> None:
    """Build info, and the certificate's expiry when the service has one (TLS on). No
    `_created` series: a series per counter and histogram more, that nobody queries."""
    disable_created_metrics()
    BUILD_INFO.labels(service, version).set(1)
    _CERTIFICATE_EXPIRY.identity = identity


def _split(method: str) -> tuple[str, str]:
    """Splits "/pkg.Service/Method" into ("pkg.Service", "Method")."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every call served. Sits outside the call guard, so refusals count
    with their codes too."""

    def _record(self, method: tuple[str, str], code: grpc.StatusCode, started: float) -> None:
        SERVER_HANDLED.labels(*method, code.name).inc()
        SERVER_SECONDS.labels(*method).observe(time.perf_counter() - started)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = _split(handler_call_details.method)
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    response = await behavior(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._record(method, code, started)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            streaming = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    async for response in streaming(request, context):
                        yield response
                    code = context.code() or grpc.StatusCode.OK
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self._record(method, code, started)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def _client_record(method: str, code: grpc.StatusCode, started: float) -> None:
    service, name = _split(method)
    CLIENT_HANDLED.labels(service, name, code.name).inc()
    CLIENT_SECONDS.labels(service, name).observe(time.perf_counter() - started)


def _method_of(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _UnaryUnaryMetrics(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
        call = await continuation(details, request)
        try:
            await call
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            _client_record(_method_of(details), code, started)
        return call


class _UnaryStreamMetrics(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        call = await continuation(details, request)
        method = _method_of(details)
        loop = asyncio.get_running_loop()

        async def record() -> None:
            _client_record(method, await call.code(), started)

        # A stream's code is known once it ended, and only to a coroutine.
        call.add_done_callback(lambda _: loop.create_task(record()))
        return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio files a client interceptor under one kind only: one per kind we call."""
    return [_UnaryUnaryMetrics(), _UnaryStreamMetrics()]


async def follow_consumer(consumer: EventConsumer, stop: asyncio.Event) -> None:
    """Keeps the consumer group's lag and pending gauges current until `stop`."""
    lag = CONSUMER_LAG.labels(consumer.group)
    pending = CONSUMER_PENDING.labels(consumer.group)
    while not stop.is_set():
        standing = await consumer.standing()
        if standing is not None:
            lag.set(standing[0])
            pending.set(standing[1])
        await pause(stop, STANDING_EVERY_S)
