"""After a concurrent run, every order is in one consistent terminal state everywhere."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from tests.e2e.saga import balance, get_order, history, honouring_retry_info, place
from tests.support.identity import as_customer, as_dealer, as_operator
from tests.support.system import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

CLIENTS = 24
ORDERS_PER_CLIENT = 10  # 240 orders
DECLINE_ABOVE = 5_000_000  # the system's setting (tests/support/system.py)


def client_session(system: System, client: int) -> list[tuple[str, bool]]:
    """One customer placing orders, cancelling every third one, some at once."""
    rng = random.Random(client)
    customer = f"inv-{client}-{uuid.uuid4().hex[:6]}"
    placed = []
    for n in range(ORDERS_PER_CLIENT):
        # About one order in ten is declined (amount above the approval limit).
        price = rng.choice([150_000, 990_000, 1_234_567, 2_000_001, 6_000_000 if n == 4 else 499])
        order = honouring_retry_info(
            lambda price=price: place(  # type: ignore[misc]
                system, customer, unit_price=price, quantity=rng.randint(1, 2)
            )
        )
        cancel = n % 3 == 0
        if cancel and order.status == order_pb.ORDER_STATUS_PAID:
            honouring_retry_info(
                lambda order=order: system.orders.CancelOrder(  # type: ignore[misc]
                    order_pb.CancelOrderRequest(order_id=order.order_id),
                    timeout=10,
                    metadata=as_customer(order.customer_id),
                )
            )
        placed.append((order.order_id, cancel and order.status == order_pb.ORDER_STATUS_PAID))
    return placed


def all_store_orders(system: System) -> dict[str, store_pb.StoreOrder]:
    found: dict[str, store_pb.StoreOrder] = {}
    token = ""
    while True:
        page = system.store.ListStoreOrders(
            store_pb.ListStoreOrdersRequest(page_size=500, page_token=token),
            timeout=10,
            metadata=as_dealer(),
        )
        found.update((o.order_id, o) for o in page.store_orders)
        token = page.next_page_token
        if not token:
            return found


def test_concurrent_orders_and_cancels_end_consistent(system: System) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        sessions = list(pool.map(lambda c: client_session(system, c), range(CLIENTS)))
    placed = [entry for session in sessions for entry in session]
    assert len(placed) >= 200
    cancelled_ids = {order_id for order_id, cancelled in placed if cancelled}
    assert len(cancelled_ids) >= len(placed) // 4

    orders = {order_id: get_order(system, order_id) for order_id, _ in placed}
    customers = {o.customer_id for o in orders.values()}

    def expected_points(order: order_pb.Order) -> int:
        return order.amount // 10 if order.status == order_pb.ORDER_STATUS_PAID else 0

    def settled() -> bool:
        """Every asynchronous step has landed: points on orders, and the view caught up."""
        for order_id in orders:
            orders[order_id] = get_order(system, order_id)
        if any(o.payback_points != expected_points(o) for o in orders.values()):
            return False
        views = {e.order_id: e for c in customers for e in history(system, c).orders}
        return all(
            order_id in views
            and views[order_id].status == o.status
            and views[order_id].points_granted - views[order_id].points_reversed
            == expected_points(o)
            for order_id, o in orders.items()
        )

    wait_until(settled, timeout=120, interval=0.5, message="the system to settle")

    store = all_store_orders(system)
    views = {e.order_id: e for c in customers for e in history(system, c).orders}
    for order_id, order in orders.items():
        assert order.status in (
            order_pb.ORDER_STATUS_PAID,
            order_pb.ORDER_STATUS_CANCELLED,
            order_pb.ORDER_STATUS_PAYMENT_DECLINED,
        ), order
        assert (order.status == order_pb.ORDER_STATUS_CANCELLED) == (order_id in cancelled_ids)
        declined = order.amount > DECLINE_ABOVE
        assert (order.status == order_pb.ORDER_STATUS_PAYMENT_DECLINED) == declined
        payment = system.payments.GetPayment(
            payment_pb.GetPaymentRequest(payment_id=order.payment_id),
            timeout=5,
            metadata=as_operator(),
        )
        view = views[order_id]
        if order.status == order_pb.ORDER_STATUS_PAID:
            assert payment.status == payment_pb.PAYMENT_STATUS_PAID
            assert store[order_id].status == store_pb.STORE_ORDER_STATUS_RECEIVED
            assert (view.points_granted, view.points_reversed) == (order.amount // 10, 0)
        elif order.status == order_pb.ORDER_STATUS_CANCELLED:
            assert payment.status == payment_pb.PAYMENT_STATUS_CANCELLED
            assert store[order_id].status == store_pb.STORE_ORDER_STATUS_CANCELLED
            assert view.points_granted == view.points_reversed == order.amount // 10
        else:
            assert payment.status == payment_pb.PAYMENT_STATUS_DECLINED
            assert order_id not in store
            assert view.points_granted == view.points_reversed == 0
        assert view.payment_status == payment.status

    for customer in customers:
        points = balance(system, customer)
        mine = [o for o in orders.values() if o.customer_id == customer]
        assert points.balance == sum(expected_points(o) for o in mine)
        grants = [
            e.order_id for e in points.entries if e.kind == promotion_pb.LEDGER_ENTRY_KIND_GRANT
        ]
        assert len(grants) == len(set(grants)), "no duplicate grants"
        assert set(grants) == {
            o.order_id for o in mine if o.status != order_pb.ORDER_STATUS_PAYMENT_DECLINED
        }
        assert history(system, customer).point_balance == points.balance
