"""OpenTelemetry tracing, set up once from `main()`. One trace follows a request from the
gateway through every gRPC call (the instrumentation's interceptors carry the W3C context in
metadata) and across Redis: events carry it in their `trace_context`, tasks in their row, so
a handler's execution joins the trace of the call that submitted it.

Spans are exported (OTLP over gRPC) only when an endpoint is configured. Otherwise the
sampler records nothing, but the SDK still gives every request a trace id and passes the
caller's on: audit rows and log lines name the trace either way, at next to no cost."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache, lru_cache

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

_TRACER = "agentry"
# A span that consumes a batch links to the traces of the messages it did not continue; past
# this many, the rest are left out (a span's links are kept in memory until it ends).
_MAX_LINKS = 32


def configure_tracing(service: str, instance: str, version: str, otlp_endpoint: str) -> None:
    """The process's tracer provider. The exporter reads the other standard `OTEL_*`
    variables itself (headers, timeouts, `OTEL_BSP_SCHEDULE_DELAY`, the sampler)."""
    resource = Resource.create(
        {"service.name": service, "service.instance.id": instance, "service.version": version}
    )
    if not otlp_endpoint:
        trace.set_tracer_provider(TracerProvider(resource=resource, sampler=ALWAYS_OFF))
        return
    # Imported only when used: the exporter pulls in protobuf modules a process without it
    # has no need of.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Exports what is still buffered; on the way out of the process."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def server_interceptor() -> grpc.aio.ServerInterceptor:
    """A span per call served, child of the caller's: first of a server's interceptors, so
    the others (the call guard's audit) see it."""
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor()
    return interceptor


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """A span per call made, its context sent along in the call's metadata."""
    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors()
    return interceptors


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`): what a message
    put on Redis carries so that its consumer's work joins the trace."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def trace_id() -> str:
    """The current trace id in hex ("" outside any trace)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


@cache
def _tracer() -> trace.Tracer:
    """Looked up once (a lookup costs more than a span that is not sampled); a tracer got
    before `configure_tracing` follows the provider it sets."""
    return trace.get_tracer(_TRACER)


@lru_cache(maxsize=1024)
def _extracted(traceparent: str, tracestate: str) -> context.Context:
    """The context of W3C headers; the tasks of one submitted batch share theirs."""
    return propagate.extract({"traceparent": traceparent, "tracestate": tracestate})


def context_of(headers: Mapping[str, str]) -> context.Context:
    return _extracted(headers.get("traceparent", ""), headers.get("tracestate", ""))


@contextmanager
def continued(
    name: str,
    parent: Mapping[str, str],
    others: Sequence[Mapping[str, str]] = (),
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[trace.Span]:
    """A span (current inside the block) continuing the trace whose context a message
    carried; linked to the traces of `others` when one span consumes several messages."""
    links = []
    for headers in others[:_MAX_LINKS]:
        linked = trace.get_current_span(context_of(headers)).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked))
    with _tracer().start_as_current_span(
        name,
        context=context_of(parent),
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    ) as span:
        yield span
