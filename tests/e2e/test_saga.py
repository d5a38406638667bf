"""The seed's scenarios on the whole system: five service processes, real NATS, real DBs."""

from __future__ import annotations

import grpc
import pytest
from phoneseller.customer.v1 import customer_service_pb2  # noqa: F401 - enum names below
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from tests.e2e.saga import (
    balance,
    error_details,
    get_order,
    history,
    honouring_retry_info,
    place,
    wait_order,
    wait_view,
)
from tests.support.identity import as_customer, as_dealer, as_operator
from tests.support.system import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_order_is_paid_earns_ten_percent_and_ships(system: System, customer: str) -> None:
    order = place(system, customer, unit_price=1_234_567, quantity=2)
    assert order.status == order_pb.ORDER_STATUS_PAID
    assert order.amount == 2_469_134
    points = 246_913  # floor(10 % of the amount)

    wait_order(system, order.order_id, "points on the order", payback_points=points)
    assert balance(system, customer).balance == points
    wait_view(
        system,
        customer,
        order.order_id,
        "the view shows the paid order",
        status=order_pb.ORDER_STATUS_PAID,
        points_granted=points,
        store_status=store_pb.STORE_ORDER_STATUS_RECEIVED,
    )

    def shipped() -> store_pb.StoreOrder:
        result: store_pb.StoreOrder = system.store.ShipOrder(
            store_pb.ShipOrderRequest(order_id=order.order_id, request_id="ship-1"),
            timeout=5,
            metadata=as_dealer(),
        )
        return result

    assert wait_until(shipped, timeout=20, message="dealer order exists").status == (
        store_pb.STORE_ORDER_STATUS_SHIPPED
    )
    wait_order(system, order.order_id, "order SHIPPED", status=order_pb.ORDER_STATUS_SHIPPED)
    view = wait_view(
        system,
        customer,
        order.order_id,
        "the view shows SHIPPED",
        status=order_pb.ORDER_STATUS_SHIPPED,
    )
    assert [e.event_type for e in view.timeline][:1] == ["Ordered"]
    assert {"Ordered", "PayCompleted", "PromoCompleted", "Shipped"} <= {
        e.event_type for e in view.timeline
    }
    assert history(system, customer).point_balance == points

    with pytest.raises(grpc.RpcError) as refused:
        system.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=order.order_id),
            metadata=as_customer(order.customer_id),
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(refused.value)["reason"] == "ORDER_ALREADY_SHIPPED"


def test_cancel_claws_the_points_back(system: System, customer: str) -> None:
    order = place(system, customer, unit_price=1_000_000)
    wait_order(system, order.order_id, "points granted", payback_points=100_000)

    cancelled = system.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=order.order_id, request_id="c-1"),
        timeout=10,
        metadata=as_customer(order.customer_id),
    )
    assert cancelled.status == order_pb.ORDER_STATUS_CANCELLED
    assert cancelled.payback_points == 0
    payment = system.payments.GetPayment(
        payment_pb.GetPaymentRequest(payment_id=order.payment_id),
        timeout=5,
        metadata=as_operator(),
    )
    assert payment.status == payment_pb.PAYMENT_STATUS_CANCELLED
    points = balance(system, customer)
    assert points.balance == 0
    assert [(e.kind, e.points) for e in points.entries] == [
        (promotion_pb.LEDGER_ENTRY_KIND_GRANT, 100_000),
        (promotion_pb.LEDGER_ENTRY_KIND_REVERSAL, -100_000),
    ]
    view = wait_view(
        system,
        customer,
        order.order_id,
        "the view shows the cancel",
        status=order_pb.ORDER_STATUS_CANCELLED,
        points_reversed=100_000,
        payment_status=payment_pb.PAYMENT_STATUS_CANCELLED,
        store_status=store_pb.STORE_ORDER_STATUS_CANCELLED,
    )
    assert view.points_granted == 100_000
    assert history(system, customer).point_balance == 0

    again = system.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=order.order_id),
        metadata=as_customer(order.customer_id),
    )
    assert again.status == order_pb.ORDER_STATUS_CANCELLED, "cancelling twice changes nothing"
    assert len(balance(system, customer).entries) == 2


def test_a_declined_payment_is_an_answer_not_an_error(system: System, customer: str) -> None:
    order = place(system, customer, unit_price=6_000_000)
    assert order.status == order_pb.ORDER_STATUS_PAYMENT_DECLINED
    assert "limit" in order.decline_reason
    wait_view(
        system,
        customer,
        order.order_id,
        "the view shows the decline",
        status=order_pb.ORDER_STATUS_PAYMENT_DECLINED,
        payment_status=payment_pb.PAYMENT_STATUS_DECLINED,
    )
    assert balance(system, customer).balance == 0
    assert get_order(system, order.order_id).payback_points == 0


def test_the_same_request_id_returns_the_same_order(system: System, customer: str) -> None:
    first = place(system, customer, request_id=f"{customer}-r1")
    second = place(system, customer, request_id=f"{customer}-r1")
    assert second.order_id == first.order_id
    assert second.payment_id == first.payment_id
    with pytest.raises(grpc.RpcError) as reused:
        place(system, customer, request_id=f"{customer}-r1", quantity=3)
    assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    wait_view(system, customer, first.order_id, "view", status=order_pb.ORDER_STATUS_PAID)
    assert len(history(system, customer).orders) == 1


def test_orders_go_on_while_promotion_is_down(system: System, customer: str) -> None:
    system.stop("promotion")
    try:
        orders = [place(system, customer, unit_price=500_000) for _ in range(3)]
        assert {o.status for o in orders} == {order_pb.ORDER_STATUS_PAID}
        assert {get_order(system, o.order_id).payback_points for o in orders} == {0}
    finally:
        system.start("promotion")
    for order in orders:
        wait_order(system, order.order_id, "points after promotion returns", payback_points=50_000)
    assert balance(system, customer).balance == 150_000


def test_cancel_fails_fast_and_changes_nothing_while_promotion_is_down(
    system: System, customer: str
) -> None:
    order = place(system, customer, unit_price=300_000)
    wait_order(system, order.order_id, "points granted", payback_points=30_000)
    system.stop("promotion")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            system.orders.CancelOrder(
                order_pb.CancelOrderRequest(order_id=order.order_id, request_id="x"),
                timeout=10,
                metadata=as_customer(order.customer_id),
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        details = error_details(refused.value)
        assert details["reason"] == "PROMOTION_UNAVAILABLE"
        assert isinstance(details["retry_delay"], float)
        assert details["retry_delay"] > 0
        payment = system.payments.GetPayment(
            payment_pb.GetPaymentRequest(payment_id=order.payment_id),
            timeout=5,
            metadata=as_operator(),
        )
        assert payment.status == payment_pb.PAYMENT_STATUS_PAID
        assert get_order(system, order.order_id).status == order_pb.ORDER_STATUS_PAID
    finally:
        system.start("promotion")
    assert balance(system, customer).balance == 30_000, "points intact"
    cancelled = honouring_retry_info(
        lambda: system.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=order.order_id, request_id="x"),
            timeout=10,
            metadata=as_customer(order.customer_id),
        )
    )
    assert cancelled.status == order_pb.ORDER_STATUS_CANCELLED
    assert balance(system, customer).balance == 0


def test_payment_down_then_retry_with_the_same_request_id(system: System, customer: str) -> None:
    system.stop("payment")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            place(system, customer, request_id=f"{customer}-retry")
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        details = error_details(refused.value)
        assert details["reason"] == "PAYMENT_UNAVAILABLE"
        assert "retry_delay" in details
    finally:
        system.start("payment")
    order = honouring_retry_info(lambda: place(system, customer, request_id=f"{customer}-retry"))
    assert order.status == order_pb.ORDER_STATUS_PAID
    assert len(history(system, customer).orders) <= 1


def test_a_lost_payment_answer_still_pays_the_order(system: System, customer: str) -> None:
    system.stop("payment")
    try:
        with pytest.raises(grpc.RpcError):
            place(system, customer, request_id=f"{customer}-lost", unit_price=700_000)
    finally:
        system.start("payment")
    (entry,) = wait_until(
        lambda: history(system, customer).orders,
        timeout=20,
        message="the ORDERED order in the view",
    )
    order = get_order(system, entry.order_id)
    assert order.status == order_pb.ORDER_STATUS_ORDERED
    # The payment went through, but order never heard the answer: only the event tells it.
    honouring_retry_info(
        lambda: system.payments.Pay(
            payment_pb.PayRequest(
                order_id=order.order_id, customer_id=customer, amount=order.amount
            ),
            timeout=5,
        )
    )
    wait_order(
        system,
        order.order_id,
        "PAID through PayCompleted",
        status=order_pb.ORDER_STATUS_PAID,
        payback_points=70_000,
    )


def test_cancels_racing_the_grant_end_at_net_zero(system: System, customer: str) -> None:
    # A well-behaved client honours RetryInfo: an earlier test restarted payment, and order's
    # channel to it may still be reconnecting on a loaded machine.
    orders = [
        honouring_retry_info(lambda i=i: place(system, customer, unit_price=100_000 + i))  # type: ignore[misc]
        for i in range(10)
    ]
    for order in orders:  # at once, while PayCompleted may still be on its way to promotion
        honouring_retry_info(
            lambda order=order: system.orders.CancelOrder(  # type: ignore[misc]
                order_pb.CancelOrderRequest(order_id=order.order_id),
                timeout=10,
                metadata=as_customer(order.customer_id),
            )
        )

    def settled() -> bool:
        points = balance(system, customer)
        grants = [e for e in points.entries if e.kind == promotion_pb.LEDGER_ENTRY_KIND_GRANT]
        return points.balance == 0 and len(grants) == len(orders)

    wait_until(settled, timeout=30, message="every grant made and reversed")
    for order in orders:
        wait_view(
            system,
            customer,
            order.order_id,
            "view cancelled",
            status=order_pb.ORDER_STATUS_CANCELLED,
        )
        assert get_order(system, order.order_id).payback_points == 0
