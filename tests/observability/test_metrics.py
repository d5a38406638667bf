"""Service metrics, proven on the running system: the demo's story in every endpoint, then every
query of the shipped dashboard on a real Prometheus (Debian's package) scraping the same.

`phoneseller demo` (the real command, through the gateway) places an order, cancels it, stops
promotion, places another (it still goes through), is refused the cancel (the clawback cannot
be confirmed: PROMOTION_UNAVAILABLE), starts promotion again and retries the cancel. Each
service's /metrics then says exactly that: two orders placed, paid and cancelled, one clawback
refused; promotion (restarted in the middle) one grant and one reversal since; nothing left in
any outbox, no consumer behind, nothing parked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc
from prometheus_client.parser import text_string_to_metric_families

from client.demo import Demo
from stack.prometheus import Prometheus, binary
from stack.supervisor import LocalStack
from tests.observability import dashboard
from tests.support.identity import customer_token
from tests.support.ports import free_port
from tests.support.stack import running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PHONESELLER = Path(sys.executable).parent / "phoneseller"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sum_of(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("observed"))) as running:
        yield running


def scrape_all(stack: LocalStack) -> dict[str, Samples]:
    return {name: scrape(url) for name, url in stack.metrics_urls().items()}


def settled(stack: LocalStack) -> dict[str, Samples] | None:
    """Every endpoint's samples once no outbox holds an event and no consumer is behind."""
    now = scrape_all(stack)
    for samples in now.values():
        if value(samples, "phoneseller_outbox_pending_events"):
            return None
        if sum_of(samples, "phoneseller_consumer_pending_events"):
            return None
        if sum_of(samples, "phoneseller_consumer_ack_pending_events"):
            return None
    return now


@dataclass(frozen=True)
class DemoRun:
    before: dict[str, Samples]
    after: dict[str, Samples]
    output: str

    @property
    def refusals(self) -> int:
        """Cancels refused with PROMOTION_UNAVAILABLE: the one while promotion was down, and
        any the retried cancel met while it came back (the demo prints each attempt)."""
        return 1 + self.output.count("   attempt ")


@pytest.fixture(scope="module")
def demo(stack: LocalStack) -> DemoRun:
    """The metrics before and after `phoneseller demo` against the running system."""
    before = wait_until(lambda: settled(stack), timeout=30, message="an idle system")
    done = subprocess.run(
        [str(PHONESELLER), "--address", stack.gateway, "demo"],
        env={**os.environ, "PHONESELLER_RUN_DIR": str(stack.run_dir)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"the demo failed:\n{done.stdout}\n{done.stderr}"
    after = wait_until(lambda: settled(stack), timeout=30, message="the demo's events handled")
    return DemoRun(before, after, done.stdout)


def delta(demo: DemoRun, replica: str, name: str, **labels: str) -> float:
    return value(demo.after[replica], name, **labels) - value(demo.before[replica], name, **labels)


def test_every_endpoint_shows_the_demo(demo: DemoRun) -> None:
    points = Demo(api=None, out=None).expected_points  # type: ignore[arg-type]
    after = demo.after
    # order: two orders placed and cancelled; the cancels refused while promotion was away.
    for outcome in ("placed", "cancelled"):
        assert delta(demo, "order-0", "phoneseller_orders_total", outcome=outcome) == 2, outcome
    rpc = "grpc_server_handled_total"
    order = {"grpc_type": "unary", "grpc_service": "phoneseller.order.v1.OrderService"}
    assert delta(demo, "order-0", rpc, **order, grpc_method="PlaceOrder", grpc_code="OK") == 2
    assert delta(demo, "order-0", rpc, **order, grpc_method="CancelOrder", grpc_code="OK") == 2
    assert (
        delta(demo, "order-0", rpc, **order, grpc_method="CancelOrder", grpc_code="UNAVAILABLE")
        == demo.refusals
    )
    # payment: both paid, none declined, the clawbacks it could not get confirmed refused.
    assert delta(demo, "payment-0", "phoneseller_orders_total", outcome="paid") == 2
    assert delta(demo, "payment-0", "phoneseller_orders_total", outcome="declined") == 0
    refused = "phoneseller_clawbacks_refused_total"
    assert delta(demo, "payment-0", refused, reason="PROMOTION_UNAVAILABLE") == demo.refusals
    assert (
        delta(
            demo,
            "payment-0",
            "phoneseller_events_published_total",
            type="phoneseller.payment.v1.PayCompleted",
        )
        == 2
    )
    assert (
        delta(
            demo,
            "payment-0",
            "phoneseller_events_published_total",
            type="phoneseller.payment.v1.PayCancelled",
        )
        == 2
    )
    # promotion was restarted in the middle: since then one grant and one reversal.
    assert value(after["promotion-0"], "phoneseller_points_granted_total") == points
    assert value(after["promotion-0"], "phoneseller_points_reversed_total") == points
    # The view handled every event of both sagas (at least once: redeliveries count too).
    for event in (
        "order.v1.Ordered",
        "payment.v1.PayCompleted",
        "promotion.v1.PromoCompleted",
        "promotion.v1.PromoCancelled",
        "payment.v1.PayCancelled",
        "order.v1.OrderCancelled",
    ):
        handled = delta(
            demo,
            "customer-0",
            "phoneseller_events_handled_total",
            consumer="customer",
            type=f"phoneseller.{event}",
        )
        assert handled >= 2, event
    # Nothing pending, behind or parked anywhere.
    for replica, samples in after.items():
        assert value(samples, "phoneseller_outbox_pending_events") == 0, replica
        assert value(samples, "phoneseller_outbox_oldest_event_age_seconds") == 0, replica
        assert value(samples, "phoneseller_dead_letter_events") == 0, replica
        assert sum_of(samples, "phoneseller_dead_letters_total") == 0, replica
    for consumer in ("order", "promotion", "store", "customer"):
        samples = after[f"{consumer}-0"]
        assert (
            "phoneseller_consumer_pending_events",
            frozenset({("consumer", consumer)}),
        ) in samples
        assert value(samples, "phoneseller_consumer_pending_events", consumer=consumer) == 0


# --- the dashboard on a real Prometheus ---------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if binary() is None:
        message = (
            "Debian's prometheus is not installed (scripts/install_system_packages.sh, as root, "
            "installs it): the dashboard's queries were NOT evaluated"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        print(f"\n!!! {message}", file=sys.stderr)
        pytest.skip(message)
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port())
    server.start(stack, interval_seconds=1)
    try:
        yield server
    finally:
        server.stop()


def load(stack: LocalStack, orders: int) -> None:
    """Orders placed and cancelled through the gateway, as customers do."""
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = order_grpc.OrderServiceStub(channel)
        for _ in range(orders):
            customer = f"load-{uuid.uuid4().hex[:8]}"
            signed_in = customer_token(stack.issuer, customer)
            placed = stub.PlaceOrder(
                order_pb.PlaceOrderRequest(
                    customer_id=customer,
                    item="Galaxy S25",
                    quantity=1,
                    unit_price=990_000,
                    request_id=uuid.uuid4().hex,
                ),
                timeout=10,
                metadata=signed_in,
            )
            stub.CancelOrder(
                order_pb.CancelOrderRequest(order_id=placed.order_id, request_id=uuid.uuid4().hex),
                timeout=10,
                metadata=signed_in,
            )


def test_every_dashboard_query_parses_and_returns_data(
    stack: LocalStack, demo: Any, prometheus: Prometheus
) -> None:
    wait_until(
        lambda: (up := prometheus.targets_up()) and len(up) == 6 and all(up.values()),
        timeout=30,
        message="Prometheus scraping every replica and Envoy",
    )
    started = time.monotonic()
    # Load over a few scrapes, so that every rate has two samples that differ.
    while time.monotonic() - started < 8:
        load(stack, 3)
    wait_until(lambda: settled(stack), timeout=30, message="the load's events handled")
    queries = dashboard.queries()
    assert len(queries) >= 15
    problems: dict[str, str] = {}

    def evaluate_all() -> bool:
        problems.clear()
        for title, expression in queries:
            try:
                if not prometheus.query(dashboard.instant(expression)):
                    problems[f"{title}: {expression}"] = "no data"
            except Exception as error:
                problems[f"{title}: {expression}"] = str(error)
        return not problems

    try:
        wait_until(evaluate_all, timeout=30, interval=1, message="every query answering")
    except AssertionError:
        pytest.fail("\n".join(f"{query} -> {problem}" for query, problem in problems.items()))
