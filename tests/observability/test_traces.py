"""Traces across gRPC and NATS: one order through the whole local system, its spans received by
a real OTLP/gRPC receiver (the collector's TraceService on a free port).

The order is placed through the gateway (paid at once), granted its points, shown in the
customer view, then cancelled. Placing it is one trace from Envoy's gateway span through
order, payment and every event it causes (Ordered, PayCompleted, PromoCompleted) to each
consumer that handles them; cancelling it is another (the clawback in promotion, PromoCancelled,
PayCancelled, OrderCancelled). In each, every span's parent is there, the NATS hops are
PRODUCER -> CONSUMER pairs, and the log lines carry the ids of the span they were written in.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as customer_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc

from services.kit.config import SERVICE_NAMES
from services.kit.events import EventTypes
from stack.supervisor import LocalStack
from tests.observability import traces
from tests.support.identity import customer_token
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.stack import running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PLACE_EVENTS = (
    "phoneseller.order.Ordered",
    "phoneseller.payment.PayCompleted",
    "phoneseller.promotion.PromoCompleted",
)
CANCEL_EVENTS = (
    "phoneseller.promotion.PromoCancelled",
    "phoneseller.payment.PayCancelled",
    "phoneseller.order.OrderCancelled",
)


def consumers_of(subject: str) -> set[str]:
    """The services whose consumer handles events of this subject (their handlers' CONSUMED)."""
    found = set()
    for service in SERVICE_NAMES:
        try:
            handlers = importlib.import_module(f"services.{service}.handlers")
        except ModuleNotFoundError:
            continue  # payment consumes nothing
        consumed: EventTypes = handlers.CONSUMED
        if subject in consumed.subjects:
            found.add(service)
    return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[LocalStack]:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Export within a tenth of a second (default 5 s), so the test waits less.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    local = stack_on_free_ports(tmp_path_factory.mktemp("traced"), otel_env=otel)
    with running_stack(local) as running:
        yield running


def view_entry(
    customers: customer_grpc.CustomerServiceStub,
    customer: str,
    order_id: str,
    metadata: tuple[tuple[str, str], ...],
) -> customer_pb.OrderHistory | None:
    history = customers.GetCustomerHistory(
        customer_pb.GetCustomerHistoryRequest(customer_id=customer), timeout=5, metadata=metadata
    )
    return next((entry for entry in history.orders if entry.order_id == order_id), None)


@pytest.fixture(scope="module")
def order_id(stack: LocalStack) -> str:
    """One order placed (and paid), granted, shown in the view, then cancelled: through the
    gateway, as a client would."""
    customer = f"traced-{uuid.uuid4().hex[:8]}"
    signed_in = customer_token(stack.issuer, customer)
    with grpc.insecure_channel(stack.gateway) as channel:
        orders = order_grpc.OrderServiceStub(channel)
        customers = customer_grpc.CustomerServiceStub(channel)
        placed = orders.PlaceOrder(
            order_pb.PlaceOrderRequest(
                customer_id=customer,
                item="Galaxy S25",
                quantity=1,
                unit_price=1_200_000,
                request_id=uuid.uuid4().hex,
            ),
            timeout=15,
            metadata=signed_in,
        )
        assert placed.status == order_pb.ORDER_STATUS_PAID
        wait_until(
            lambda: (
                (e := view_entry(customers, customer, placed.order_id, signed_in))
                and e.points_granted
            ),
            timeout=30,
            message="the view to show the points granted",
        )
        cancelled = orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=placed.order_id, request_id=uuid.uuid4().hex),
            timeout=15,
            metadata=signed_in,
        )
        assert cancelled.status == order_pb.ORDER_STATUS_CANCELLED
        wait_until(
            lambda: (
                (e := view_entry(customers, customer, placed.order_id, signed_in))
                and e.points_reversed == e.points_granted
                and e.status == order_pb.ORDER_STATUS_CANCELLED
            ),
            timeout=30,
            message="the view to show the cancel",
        )
    order_id: str = placed.order_id  # the generated stubs are untyped
    return order_id


def whole(trace: list[ReceivedSpan], rpc: str, subjects: tuple[str, ...]) -> bool:
    """Every expected span is in: the gateway's root, the RPC, each event published and
    handled by each of its consumers, and no span without its parent."""
    names = {(s.service, s.kind, s.name) for s in trace}
    if not any(s.service == "envoy-gateway" and not s.parent_span_id for s in trace):
        return False
    if not any(kind == "SERVER" and name.endswith(rpc) for _, kind, name in names):
        return False
    for subject in subjects:
        if ("PRODUCER", f"publish {subject}") not in {(k, n) for _, k, n in names}:
            return False
        for consumer in consumers_of(subject):
            if (consumer, "CONSUMER", f"process {subject}") not in names:
                return False
    # Each call between services passed both sidecars: the server's span is the child of the
    # inbound sidecar's, itself the outbound one's (so Envoy's spans must be in too).
    by_id = {span.span_id: span for span in trace}
    for span in trace:
        if span.kind == "SERVER" and not span.service.startswith("envoy-"):
            parent = by_id.get(span.parent_span_id)
            if parent is None or not parent.service.startswith("envoy-inbound-"):
                return False
    return not traces.orphans(trace)


def the_two_traces(
    receiver: OtlpReceiver, order_id: str
) -> tuple[list[ReceivedSpan], list[ReceivedSpan]]:
    """The order's place and cancel traces, once they are whole."""

    def complete() -> tuple[list[ReceivedSpan], list[ReceivedSpan]] | None:
        found = traces.traces_of_order(receiver.spans, order_id)
        place = [t for t in found.values() if whole(t, "/PlaceOrder", PLACE_EVENTS)]
        cancel = [t for t in found.values() if whole(t, "/CancelOrder", CANCEL_EVENTS)]
        return (place[0], cancel[0]) if len(found) == 2 and place and cancel else None

    try:
        return wait_until(complete, timeout=30, interval=0.2, message="both traces whole")
    except AssertionError:
        for trace in traces.traces_of_order(receiver.spans, order_id).values():
            print(
                traces.tree(trace), "\norphans:", [traces.label(s) for s in traces.orphans(trace)]
            )
        raise


def test_placing_and_cancelling_an_order_are_two_whole_traces(
    receiver: OtlpReceiver, order_id: str
) -> None:
    place, cancel = the_two_traces(receiver, order_id)
    for name, trace in (("PlaceOrder", place), ("CancelOrder", cancel)):
        print(f"\n--- the {name} trace ({len(trace)} spans) ---\n{traces.tree(trace)}")
        assert len(traces.roots(trace)) == 1, [traces.label(s) for s in traces.roots(trace)]
        assert traces.orphans(trace) == []
        by_id = {span.span_id: span for span in trace}
        # Each NATS hop: the consumer's span is the child of the span that published the event.
        for span in trace:
            if span.kind == "CONSUMER" and span.name.startswith("process "):
                producer = by_id[span.parent_span_id]
                assert producer.kind == "PRODUCER", traces.label(producer)
                assert (
                    producer.attributes["messaging.message.id"]
                    == span.attributes["messaging.message.id"]
                )
        # x-request-id went on with every call: each proxy a request passed (the gateway, the
        # sidecars out of and into every service) tags its span with the gateway's one id.
        request_ids = {
            s.attributes.get("guid:x-request-id") for s in trace if s.service.startswith("envoy-")
        }
        assert len(request_ids) == 1 and None not in request_ids, request_ids
    # The clawback reached promotion inside the cancel's trace, through both sidecars.
    cancel_names = {(s.service, s.name) for s in cancel}
    assert (
        "promotion",
        "/phoneseller.promotion.v1.PromotionService/ClawBackPoints",
    ) in cancel_names
    assert {s.service for s in cancel} >= {"envoy-outbound-promotion", "envoy-inbound-promotion-0"}


def test_every_service_and_envoy_sent_spans_and_every_link_is_there(
    receiver: OtlpReceiver, order_id: str
) -> None:
    the_two_traces(receiver, order_id)
    spans = receiver.spans
    services = {span.service for span in spans}
    assert set(SERVICE_NAMES) <= services, services
    assert any(service.startswith("envoy-") for service in services), services
    # A batch span (several events handled in one unit of work) links to each producer.
    ids = {span.span_id for span in spans}
    for span in spans:
        for _, linked in span.links:
            assert linked in ids, f"{traces.label(span)} links to a span nobody exported"
    # The customer view handles events in batches: its consumer spans are there too.
    assert any(s.service == "customer" and s.kind == "CONSUMER" for s in spans)


def test_log_lines_carry_the_trace_and_span_of_their_span(
    stack: LocalStack, receiver: OtlpReceiver, order_id: str
) -> None:
    _, cancel = the_two_traces(receiver, order_id)
    lines = [
        json.loads(line) for line in logged(stack.logs / "order-0.log") if line.startswith("{")
    ]
    cancelled = [
        line
        for line in lines
        if line["message"] == "order cancelled" and line.get("order_id") == order_id
    ]
    assert cancelled, "the order service logged no cancel"
    order_spans = {s.span_id for s in cancel if s.service == "order"}
    assert cancelled[0]["trace_id"] == cancel[0].trace_id
    assert cancelled[0]["span_id"] in order_spans


def logged(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()
