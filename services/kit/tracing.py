"""OpenTelemetry traces: one trace per request, from the gateway through every service and
across every NATS hop, exported with OTLP (docs/observability.md).

Off unless an OTLP endpoint is configured with the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none` turn it off again). Off, nothing here runs on the data path: no
interceptor is installed (grpc.aio interceptors cost measurably per call) and
`services.kit.context` passes the incoming context on unchanged. On:

- gRPC: OpenTelemetry's aio server interceptor (a SERVER span per phoneseller RPC, parent from
  the caller's `traceparent` or B3 headers) and client interceptors (a CLIENT span per call,
  whose context goes out as W3C `traceparent`/`tracestate` and B3, as Istio expects);
- databases: asyncpg's instrumentation on PostgreSQL, and a CLIENT span per statement of the
  kit's SQLite sessions;
- NATS: the context of the span that committed an event is stored with it in the outbox; the
  relay publishes it in a PRODUCER span, child of that context, whose own context travels in
  the event's headers; the consumer handles it in a CONSUMER span, child of the producer's.

Every other `OTEL_*` variable (sampler, batch processor, resource attributes, headers, ...)
means what the OpenTelemetry specification says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.kit import context
from services.kit.events import Envelope

__all__ = [
    "Producing",
    "client_interceptors",
    "configure",
    "consuming",
    "consuming_batch",
    "enabled",
    "endpoint",
    "producing",
    "server_interceptors",
    "shutdown",
]

#: The variables that name where spans go, most specific first.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: Only the phoneseller RPCs are traced: Envoy's health checks (every second, every replica)
#: and reflection would be a root span each and drown the traces that matter.
_TRACED_RPCS = filters.service_prefix("phoneseller.")
#: Events carry the W3C context only (the NATS hop is ours; no proxy reads B3 there).
_W3C = TraceContextTextMapPropagator()


def endpoint(env: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint spans are exported to, or "" when tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return ""
    return next((value for name in ENDPOINT_VARIABLES if (value := env.get(name, "").strip())), "")


@dataclasses.dataclass
class _Tracing:
    provider: TracerProvider
    tracer: trace.Tracer


_state: _Tracing | None = None


def enabled() -> bool:
    return _state is not None


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Record and export spans as `service` if an endpoint is configured; True if so."""
    global _state
    env = os.environ if env is None else env
    if _state is not None or not endpoint(env):
        return _state is not None
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the service's own name.
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(_WithoutLoneStatements(BatchSpanProcessor(OTLPSpanExporter())))
    trace.set_tracer_provider(provider)
    if not env.get("OTEL_PROPAGATORS"):
        # Both are written; of the two read, the later wins. A proxy rewrites only the headers of
        # its own tracer and passes the others on as the caller wrote them, so the one that
        # names the proxy's span must be read last: W3C for Envoy's OpenTelemetry tracer (the
        # local mesh, Istio's `opentelemetry` providers). A Zipkin-traced mesh (B3) wants
        # OTEL_PROPAGATORS=tracecontext,baggage,b3multi instead.
        propagate.set_global_textmap(
            CompositePropagator([B3MultiFormat(), _W3C, W3CBaggagePropagator()])
        )
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _state = _Tracing(provider, provider.get_tracer("phoneseller"))
    _instrument_sqlite(_state.tracer)
    context._active = _active_context
    return True


def shutdown() -> None:
    """Export what is left and stop recording (at the end of a service's drain)."""
    global _state
    state, _state = _state, None
    if state is None:
        return
    context._active = None
    with contextlib.suppress(Exception):
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    _uninstrument_sqlite()
    state.provider.shutdown()


def server_interceptors() -> list[Any]:
    """The gRPC server interceptors tracing needs (none when it is off)."""
    if _state is None:
        return []
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_state.provider, filter_=_TRACED_RPCS
    )
    return [interceptor]


def client_interceptors() -> list[Any] | None:
    """The gRPC client interceptors tracing needs (None when it is off: a channel with no
    interceptors at all, not an empty list, is the cheap one)."""
    if _state is None:
        return None
    interceptors: list[Any] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_state.provider, filter_=_TRACED_RPCS
    )
    return interceptors


class _WithoutLoneStatements(SpanProcessor):
    """Drops database spans that have no parent: the relay's and the housekeeping's polls
    (every half second, every process) would each be a trace of one statement."""

    def __init__(self, exporting: SpanProcessor) -> None:
        self.exporting = exporting

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.exporting.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        if span.parent is None and ("db.system.name" in attributes or "db.system" in attributes):
            return
        self.exporting.on_end(span)

    def shutdown(self) -> None:
        self.exporting.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporting.force_flush(timeout_millis)


# --- context <-> W3C headers --------------------------------------------------------------


def _active_context() -> tuple[str, str] | None:
    return _carrier(trace.get_current_span())


def _carrier(span: Span) -> tuple[str, str] | None:
    """(traceparent, tracestate) of a span."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    parent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )
    state = span_context.trace_state.to_header() if span_context.trace_state else ""
    return parent, state


def _parent_of(envelope: Envelope) -> Any:
    """The OpenTelemetry context an event's headers (or outbox row) carry."""
    carrier = {"traceparent": envelope.traceparent}
    if envelope.tracestate:
        carrier["tracestate"] = envelope.tracestate
    return _W3C.extract(carrier)


def _event_attributes(envelope: Envelope, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.destination.name": envelope.subject,
        "messaging.message.id": envelope.event_id,
        "phoneseller.event_type": envelope.event_type,
        "phoneseller.order_id": envelope.order_id,
    }


# --- NATS: producer spans -----------------------------------------------------------------


@dataclasses.dataclass
class Producing:
    """A batch of events being published: what to send, and the spans that cover it."""

    envelopes: list[Envelope]
    spans: list[Span] = dataclasses.field(default_factory=list)

    def acknowledged(self, acks: Sequence[object]) -> None:
        """Mark the spans of events JetStream did not acknowledge as failed."""
        for span, ack in zip(self.spans, acks, strict=False):
            if isinstance(ack, BaseException):
                span.set_status(Status(StatusCode.ERROR, f"{type(ack).__name__}: {ack}"))


@contextlib.contextmanager
def producing(envelopes: Sequence[Envelope]) -> Iterator[Producing]:
    """A PRODUCER span per event, child of the context stored with it; the events to publish
    carry the producer span's context in their headers."""
    if _state is None:
        yield Producing(list(envelopes))
        return
    tracer = _state.tracer
    spans: list[Span] = []
    sent: list[Envelope] = []
    for envelope in envelopes:
        span = tracer.start_span(
            f"publish {envelope.subject}",
            context=_parent_of(envelope) if envelope.traceparent else None,
            kind=SpanKind.PRODUCER,
            attributes=_event_attributes(envelope, "send"),
        )
        parent, state = _carrier(span) or ("", "")
        sent.append(dataclasses.replace(envelope, traceparent=parent, tracestate=state))
        spans.append(span)
    try:
        yield Producing(sent, spans)
    except BaseException as exc:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for span in spans:
            span.end()


# --- NATS: consumer spans -----------------------------------------------------------------


@contextlib.contextmanager
def consuming(consumer: str, envelope: Envelope) -> Iterator[None]:
    """Handle one event in its context: a CONSUMER span, child of its producer's (tracing on),
    or its traceparent bound for the logs and the events it causes (off)."""
    if _state is None:
        incoming = {"tracestate": envelope.tracestate} if envelope.tracestate else None
        with context.bound(
            order_id=envelope.order_id, parent=envelope.traceparent or None, incoming=incoming
        ):
            yield
        return
    attributes = _event_attributes(envelope, "process")
    attributes["messaging.consumer.group.name"] = consumer
    with (
        _state.tracer.start_as_current_span(
            f"process {envelope.subject}",
            context=_parent_of(envelope) if envelope.traceparent else None,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ),
        context.bound(order_id=envelope.order_id),
    ):
        yield


@contextlib.contextmanager
def consuming_batch(consumer: str, envelopes: Sequence[Envelope]) -> Iterator[None]:
    """Handle a batch of events at once (one unit of work for all).

    One event is handled as `consuming` does. Several: each still gets its CONSUMER span,
    child of its producer's, in its order's trace; the work itself, done once for all, runs in
    a batch span of its own linked to every event's producer (OpenTelemetry's messaging
    conventions for batch processing). Tracing off, several events bind no single trace.
    """
    if len(envelopes) == 1:
        with consuming(consumer, envelopes[0]):
            yield
        return
    if _state is None:
        yield
        return
    tracer = _state.tracer
    parents = [_parent_of(e) if e.traceparent else None for e in envelopes]
    spans = []
    for envelope, parent in zip(envelopes, parents, strict=True):
        attributes = _event_attributes(envelope, "process")
        attributes["messaging.consumer.group.name"] = consumer
        spans.append(
            tracer.start_span(
                f"process {envelope.subject}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
        )
    links = [
        Link(trace.get_current_span(parent).get_span_context())
        for parent in parents
        if parent is not None
    ]
    try:
        with tracer.start_as_current_span(
            f"process batch {consumer}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": consumer,
                "messaging.batch.message_count": len(envelopes),
            },
        ):
            yield
    except BaseException as exc:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for span in spans:
            span.end()


# --- SQLite statements --------------------------------------------------------------------

_SESSION_METHODS = ("rows", "execute", "execute_many")
_originals: dict[str, Callable[..., Awaitable[Any]]] = {}
_VERB = re.compile(r"^\s*(\w+)")
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def _summary(sql: str) -> str:
    """`SELECT outbox`, `INSERT inbox`: the operation and the first table of a statement."""
    verb = _VERB.match(sql)
    table = _TABLE.search(sql)
    return " ".join(part.group(1) for part in (verb, table) if part) or "statement"


def _instrument_sqlite(tracer: trace.Tracer) -> None:
    """A CLIENT span per statement of the kit's SQLite sessions, like asyncpg's spans."""
    from services.kit import db  # the database imports the kit's statements; not at import

    session = db._SqliteSession
    for name in _SESSION_METHODS:
        original = getattr(session, name)
        _originals[name] = original

        def traced(
            original: Callable[..., Awaitable[Any]],
        ) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(original)
            async def run(self: Any, statement: Any, *args: Any, **values: Any) -> Any:
                sample = values if not args else (args[0][0] if args[0] else None)
                if sample is None or not trace.get_current_span().get_span_context().is_valid:
                    return await original(self, statement, *args, **values)  # no lone spans
                sql = statement.for_dialect("sqlite", sample).sql
                with tracer.start_as_current_span(
                    _summary(sql),
                    kind=SpanKind.CLIENT,
                    attributes={"db.system.name": "sqlite", "db.query.text": sql},
                ):
                    return await original(self, statement, *args, **values)

            return run

        setattr(session, name, traced(original))


def _uninstrument_sqlite() -> None:
    from services.kit import db

    for name, original in _originals.items():
        setattr(db._SqliteSession, name, original)
    _originals.clear()
