"""Prometheus metrics of the services: the saga, the event flow, the RPCs (docs/observability.md).

Every service registers the same metrics in prometheus-client's default registry and serves
them on its metrics port (`services.kit.metrics_server`). What happens on the data path only
increments a counter or observes a histogram (about a microsecond); what has to be counted in a
database or asked of JetStream (outbox rows, consumer lag, parked events) is a gauge refreshed
when Prometheus scrapes, never per event.

Names follow Prometheus' conventions: `_total` counters, base units in the name (`_seconds`),
and the gRPC ones those of go-grpc-prometheus, which dashboards for gRPC services expect.
Which service a series comes from is the scrape's target labels (`app`, `pod`, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge, Histogram

from services.kit.interceptors import WrappingInterceptor

# --- the saga -----------------------------------------------------------------------------

ORDERS = Counter(
    "phoneseller_orders",
    "Orders by saga step, counted once its event is committed: placed (order), paid and "
    "declined (payment), cancelled (order).",
    ["outcome"],
)
POINTS_GRANTED = Counter(
    "phoneseller_points_granted", "Payback points granted for paid orders (promotion)."
)
POINTS_REVERSED = Counter(
    "phoneseller_points_reversed", "Payback points clawed back for cancelled orders (promotion)."
)
CLAWBACKS_REFUSED = Counter(
    "phoneseller_clawbacks_refused",
    "Cancels refused because the points system did not confirm the clawback (payment), by the "
    "reason given to the caller: the seed's fallback.",
    ["reason"],
)

#: The committed events that are steps of the saga: event type -> (counter, label, field whose
#: value is added; None adds one).
_SAGA_STEPS: dict[str, tuple[Counter, str | None, str | None]] = {
    "phoneseller.order.v1.Ordered": (ORDERS, "placed", None),
    "phoneseller.payment.v1.PayCompleted": (ORDERS, "paid", None),
    "phoneseller.payment.v1.PayDeclined": (ORDERS, "declined", None),
    "phoneseller.order.v1.OrderCancelled": (ORDERS, "cancelled", None),
    "phoneseller.promotion.v1.PromoCompleted": (POINTS_GRANTED, None, "points"),
    "phoneseller.promotion.v1.PromoCancelled": (POINTS_REVERSED, None, "points_reversed"),
}

# --- the event flow -----------------------------------------------------------------------

EVENTS_COMMITTED = Counter(
    "phoneseller_events_committed", "Events written to the outbox with their change.", ["type"]
)
EVENTS_PUBLISHED = Counter(
    "phoneseller_events_published", "Events the outbox relay published to JetStream.", ["type"]
)
EVENTS_DUPLICATE = Counter(
    "phoneseller_events_duplicate",
    "Events the relay published again and JetStream refused as duplicates (its dedup window).",
)
PUBLISH_FAILURES = Counter(
    "phoneseller_event_publish_failures", "Publishes JetStream did not acknowledge."
)
EVENTS_HANDLED = Counter(
    "phoneseller_events_handled",
    "Events a consumer applied (with their inbox rows), by consumer and event type.",
    ["consumer", "type"],
)
DEAD_LETTERS = Counter(
    "phoneseller_dead_letters",
    "Events parked in dead_letters after failing max_attempts times (or undecodable).",
    ["consumer", "type"],
)
OUTBOX_PENDING = Gauge(
    "phoneseller_outbox_pending_events", "Outbox rows not yet acknowledged by JetStream."
)
OUTBOX_OLDEST = Gauge(
    "phoneseller_outbox_oldest_event_age_seconds",
    "Age of the oldest outbox row (0 when the outbox is empty): how far publishing lags.",
)
DEAD_LETTER_ROWS = Gauge(
    "phoneseller_dead_letter_events", "Rows in dead_letters: parked events left to an operator."
)
CONSUMER_PENDING = Gauge(
    "phoneseller_consumer_pending_events",
    "Events in the stream the consumer has not been sent yet (JetStream's num_pending).",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "phoneseller_consumer_ack_pending_events",
    "Events sent to the consumer and not acknowledged yet (JetStream's num_ack_pending).",
    ["consumer"],
)

# --- RPCs ---------------------------------------------------------------------------------

RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed by the server, by method and gRPC status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to answer an RPC.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def events_committed(events: Iterable[Message]) -> None:
    """Count a durable transaction's events, and the saga steps among them."""
    for event in events:
        event_type = event.DESCRIPTOR.full_name
        _committed(event_type).inc()
        step = _SAGA_STEPS.get(event_type)
        if step is not None:
            counter, label, field = step
            amount = getattr(event, field) if field else 1
            (counter.labels(label) if label else counter).inc(amount)


def events_published(event_types: Sequence[str], duplicates: int, failures: int) -> None:
    for event_type in event_types:
        _published(event_type).inc()
    if duplicates:
        EVENTS_DUPLICATE.inc(duplicates)
    if failures:
        PUBLISH_FAILURES.inc(failures)


def events_handled(consumer: str, event_types: Iterable[str]) -> None:
    for event_type in event_types:
        _handled(consumer, event_type).inc()


def event_parked(consumer: str, event_type: str) -> None:
    DEAD_LETTERS.labels(consumer, event_type).inc()


def clawback_refused(reason: str) -> None:
    CLAWBACKS_REFUSED.labels(reason).inc()


# Labelled children, made once per label set: `labels()` costs a lock and a dict per call.
def _cached(factory: Callable[..., Any]) -> Callable[..., Any]:
    children: dict[tuple[str, ...], Any] = {}

    def child(*labels: str) -> Any:
        found = children.get(labels)
        if found is None:
            found = children[labels] = factory(*labels)
        return found

    return child


_committed = _cached(EVENTS_COMMITTED.labels)
_published = _cached(EVENTS_PUBLISHED.labels)
_handled = _cached(EVENTS_HANDLED.labels)


class RpcMetricsInterceptor(WrappingInterceptor):
    """Counts and times every unary RPC by method and status code (the gRPC instrumentation
    of OpenTelemetry gives spans, not metrics, and is not installed when tracing is off)."""

    def wrap(self, method: str, handler: Any) -> Any:
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        service, _, name = method.strip("/").rpartition("/")
        seconds = RPC_SECONDS.labels("unary", service, name)
        codes = _cached(lambda code: RPC_HANDLED.labels("unary", service, name, code))

        async def handle(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, ctx)
            except grpc.aio.AbortError:
                status = ctx.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            except BaseException:
                code = "CANCELLED" if _cancelled(ctx) else "UNKNOWN"
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
                codes(code).inc()

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _cancelled(ctx: grpc.aio.ServicerContext) -> bool:
    try:
        return bool(ctx.cancelled())
    except Exception:
        return False
