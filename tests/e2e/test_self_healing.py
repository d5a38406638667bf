"""Self-healing: supervisord restarts a service killed with SIGKILL, and the saga goes on.

The local form of Kubernetes' liveness probe + restart policy. While a client keeps placing
orders through the gateway (retrying UNAVAILABLE with the same request_id, as AIP-155 allows),
each service process in turn is killed with `kill -9`: no drain, no goodbye, whatever it was
doing (a payment in flight, a consumer batch not yet acknowledged, an outbox not yet relayed).
supervisord starts it again (a new pid), it reports SERVING, Envoy counts it healthy, and in
the end every order placed before, during and after the kills is PAID with its 10 % points,
has a RECEIVED dealer order and shows in the customer's history: no event lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as customer_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb
from phoneseller.store.v1 import store_service_pb2_grpc as store_grpc

from stack.supervisor import LocalStack
from tests.e2e.saga import error_details
from tests.support.identity import Tokens, signed_in
from tests.support.stack import admin, program_pid, running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

#: Killed in this order; each one while orders are being placed.
VICTIMS = ("promotion", "store", "customer", "payment", "order")
#: Services whose calls from other services pass a sidecar cluster of their own.
EAST_WEST = ("payment", "promotion")
#: Orders the client places between two kills (so that each kill meets a flowing saga).
ORDERS_BETWEEN_KILLS = 3
#: How long one order may take, retries included (a restart takes a few seconds).
ORDER_DEADLINE = 30.0


@dataclass
class Placer:
    """A client placing orders one after the other in a thread, retrying each order's
    UNAVAILABLE answers with the same request_id until it is answered."""

    channel: grpc.Channel
    customer: str
    placed: list[order_pb.Order] = field(default_factory=list)
    retries: list[tuple[str, str]] = field(default_factory=list)  # (code, reason) per retry
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.orders = order_grpc.OrderServiceStub(self.channel)
        self.thread = threading.Thread(target=self.run, name="placer", daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and not self.failures:
            n += 1
            try:
                order = self.place_one(1_000_000 + 1_000 * n)
            except Exception as exc:  # reported by the test, never swallowed
                self.failures.append(f"order {n}: {exc!r}")
                return
            with self.progress:
                self.placed.append(order)
                self.progress.notify_all()
            self.stop.wait(0.05)

    def place_one(self, unit_price: int) -> order_pb.Order:
        request = order_pb.PlaceOrderRequest(
            customer_id=self.customer,
            item="Galaxy S25",
            quantity=1,
            unit_price=unit_price,
            request_id=uuid.uuid4().hex,
        )
        deadline = time.monotonic() + ORDER_DEADLINE
        while True:
            try:
                order: order_pb.Order = self.orders.PlaceOrder(request, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                details = error_details(exc)
                self.retries.append((exc.code().name, str(details.get("reason", exc.details()))))
                delay = details.get("retry_delay")
                wait = delay if isinstance(delay, float) else 0.2
                if time.monotonic() + wait > deadline:
                    raise
                # Back off as asked (or briefly), but stop waiting when the test ends.
                self.stop.wait(wait)
                continue
            if order.status != order_pb.ORDER_STATUS_PAID:
                raise AssertionError(f"order not paid: {order}")
            return order

    def wait_for(self, count: int, timeout: float = 60) -> None:
        with self.progress:
            if not self.progress.wait_for(
                lambda: len(self.placed) >= count or bool(self.failures), timeout
            ):
                raise AssertionError(f"only {len(self.placed)} of {count} orders placed")
        assert not self.failures, self.failures


def kill_and_wait_restarted(stack: LocalStack, service: str) -> tuple[int, int, float]:
    """SIGKILL the service's process; wait until supervisord runs a new one that reports
    SERVING and Envoy counts healthy. Returns (old pid, new pid, seconds until healthy)."""
    program, name = stack.program(service, 0), stack.replica_name(service, 0)
    old = program_pid(stack, program)
    assert old > 0, f"{program} is not running"
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    def restarted() -> int | None:
        pid = program_pid(stack, program)
        return pid if pid not in (0, old) else None

    new = wait_until(restarted, timeout=30, interval=0.1, message=f"{program} restarted")
    wait_until(lambda: stack.health()[name], timeout=30, interval=0.1, message=f"{name} SERVING")
    envoy = admin(stack)
    clusters = [f"gateway|{service}"] + ([f"outbound|{service}"] if service in EAST_WEST else [])
    for cluster in clusters:
        wait_until(
            lambda cluster=cluster: envoy.healthy_hosts(cluster) == [name],  # type: ignore[misc]
            timeout=30,
            interval=0.1,
            message=f"Envoy counts {name} healthy in {cluster}",
        )
    return old, new, time.monotonic() - killed_at


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("healing"))) as running:
        yield running


def all_store_orders(store: store_grpc.StoreServiceStub) -> dict[str, store_pb.StoreOrder]:
    found: dict[str, store_pb.StoreOrder] = {}
    token = ""
    while True:
        page = store.ListStoreOrders(
            store_pb.ListStoreOrdersRequest(page_size=500, page_token=token), timeout=10
        )
        found.update((o.order_id, o) for o in page.store_orders)
        token = page.next_page_token
        if not token:
            return found


def test_killed_services_come_back_and_no_event_is_lost(stack: LocalStack) -> None:
    customer = f"healing-{uuid.uuid4().hex[:8]}"
    tokens = Tokens(stack.issuer)
    channel = grpc.insecure_channel(stack.gateway)
    # The client signs in as its customer; the checks below read as the dealer would.
    as_customer = signed_in(channel, tokens.customer(customer))
    as_dealer = signed_in(channel, tokens.dealer())
    placer = Placer(as_customer, customer)
    restarts: dict[str, tuple[int, int, float]] = {}
    try:
        placer.thread.start()
        placer.wait_for(ORDERS_BETWEEN_KILLS)  # before the kills
        for service in VICTIMS:
            restarts[service] = kill_and_wait_restarted(stack, service)
            # During and after each restart the client keeps ordering.
            placer.wait_for(len(placer.placed) + ORDERS_BETWEEN_KILLS)
    finally:
        placer.stop.set()
        placer.thread.join(ORDER_DEADLINE + 15)
    print(f"restarts (old pid, new pid, seconds to healthy): {restarts}")
    print(f"{len(placer.placed)} orders placed; client retries: {placer.retries}")
    assert not placer.failures, placer.failures
    assert not placer.thread.is_alive()
    for service, (old, new, _) in restarts.items():
        assert new not in (0, old), f"{service} was not restarted"

    orders_stub = order_grpc.OrderServiceStub(as_customer)
    store_stub = store_grpc.StoreServiceStub(as_dealer)
    customers = customer_grpc.CustomerServiceStub(as_customer)
    placed = {o.order_id: o for o in placer.placed}
    assert len(placed) == len(placer.placed) >= ORDERS_BETWEEN_KILLS * (len(VICTIMS) + 1)

    def orders_missing() -> list[str]:
        """The orders not (yet) PAID with their 10 % points."""
        missing = []
        for order_id, order in placed.items():
            current = orders_stub.GetOrder(order_pb.GetOrderRequest(order_id=order_id), timeout=5)
            if (current.status, current.payback_points) != (
                order_pb.ORDER_STATUS_PAID,
                order.amount // 10,
            ):
                missing.append(f"{order_id}: {current.status} {current.payback_points}")
        return missing

    def stores_settled() -> bool:
        found = all_store_orders(store_stub)
        return all(
            order_id in found and found[order_id].status == store_pb.STORE_ORDER_STATUS_RECEIVED
            for order_id in placed
        )

    def view_settled() -> customer_pb.CustomerHistory | None:
        view: customer_pb.CustomerHistory = customers.GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(customer_id=customer), timeout=5
        )
        entries = {e.order_id: e for e in view.orders}
        for order_id, order in placed.items():
            entry = entries.get(order_id)
            if entry is None or (
                entry.status,
                entry.payment_status,
                entry.store_status,
                entry.points_granted,
            ) != (
                order_pb.ORDER_STATUS_PAID,
                payment_pb.PAYMENT_STATUS_PAID,
                store_pb.STORE_ORDER_STATUS_RECEIVED,
                order.amount // 10,
            ):
                return None
        return view

    try:
        # A consumer killed before acknowledging gets its batch again after the ack wait.
        wait_until(
            lambda: not orders_missing(),
            timeout=45,
            interval=0.25,
            message="every order PAID with its points",
        )
        wait_until(stores_settled, timeout=30, interval=0.25, message="every dealer order RECEIVED")
        view = wait_until(
            view_settled,
            timeout=30,
            interval=0.25,
            message="the view shows every order paid, received, with points",
        )
        assert view.point_balance == sum(o.amount // 10 for o in placed.values())
        assert {e.order_id for e in view.orders} == set(placed)
    finally:
        channel.close()
