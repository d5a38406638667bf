"""Every kind of bad input gets its exact gRPC code with rich details, and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from tests.e2e.saga import error_details, wait_order
from tests.e2e.saga import place as place_as
from tests.support.identity import as_customer, as_dealer, as_operator
from tests.support.system import System, table_counts

pytestmark = pytest.mark.slow

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNKNOWN_ID = "no-such-id"
LONG_ID = "x" * 65
GOOD_ORDER: dict[str, Any] = {
    "customer_id": "alice",
    "item": "Galaxy S25",
    "quantity": 1,
    "unit_price": 1_200_000,
}


def place(**changes: Any) -> Callable[[System], object]:
    request = order_pb.PlaceOrderRequest(**{**GOOD_ORDER, **changes})
    return lambda s: s.orders.PlaceOrder(request, timeout=5, metadata=as_customer("alice"))


# (case, call, expected code, the field a BadRequest must name)
CASES: list[tuple[str, Callable[[System], object], grpc.StatusCode, str | None]] = [
    ("place: no customer", place(customer_id=""), INVALID, "customer_id"),
    ("place: customer with a space", place(customer_id="al ice"), INVALID, "customer_id"),
    ("place: customer id too long", place(customer_id=LONG_ID), INVALID, "customer_id"),
    ("place: customer id with a slash", place(customer_id="a/b"), INVALID, "customer_id"),
    ("place: no item", place(item=""), INVALID, "item"),
    ("place: blank item", place(item="   "), INVALID, "item"),
    ("place: item too long", place(item="G" * 101), INVALID, "item"),
    ("place: item with a control character", place(item="Galaxy\x00"), INVALID, "item"),
    ("place: quantity 0", place(quantity=0), INVALID, "quantity"),
    ("place: negative quantity", place(quantity=-1), INVALID, "quantity"),
    ("place: absurd quantity", place(quantity=101), INVALID, "quantity"),
    ("place: price 0", place(unit_price=0), INVALID, "unit_price"),
    ("place: negative price", place(unit_price=-5), INVALID, "unit_price"),
    ("place: price above the limit", place(unit_price=100_000_001), INVALID, "unit_price"),
    ("place: price at int64 max", place(unit_price=2**63 - 1), INVALID, "unit_price"),
    ("place: request id too long", place(request_id=LONG_ID), INVALID, "request_id"),
    ("place: request id with a space", place(request_id="r 1"), INVALID, "request_id"),
    (
        "get order: empty id",
        lambda s: s.orders.GetOrder(order_pb.GetOrderRequest(order_id=""), metadata=as_operator()),
        INVALID,
        "order_id",
    ),
    (
        "get order: malformed id",
        lambda s: s.orders.GetOrder(
            order_pb.GetOrderRequest(order_id="../etc"), metadata=as_operator()
        ),
        INVALID,
        "order_id",
    ),
    (
        "get order: unknown id",
        lambda s: s.orders.GetOrder(
            order_pb.GetOrderRequest(order_id=UNKNOWN_ID), metadata=as_operator()
        ),
        NOT_FOUND,
        None,
    ),
    (
        "cancel: empty id",
        lambda s: s.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=""), metadata=as_customer("alice")
        ),
        INVALID,
        "order_id",
    ),
    (
        "cancel: unknown id",
        lambda s: s.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=UNKNOWN_ID), metadata=as_customer("alice")
        ),
        NOT_FOUND,
        None,
    ),
    (
        "cancel: bad request id",
        lambda s: s.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=UNKNOWN_ID, request_id=LONG_ID),
            metadata=as_customer("alice"),
        ),
        INVALID,
        "request_id",
    ),
    (
        "get payment: empty id",
        lambda s: s.payments.GetPayment(
            payment_pb.GetPaymentRequest(payment_id=""), metadata=as_operator()
        ),
        INVALID,
        "payment_id",
    ),
    (
        "get payment: unknown id",
        lambda s: s.payments.GetPayment(
            payment_pb.GetPaymentRequest(payment_id=UNKNOWN_ID), metadata=as_operator()
        ),
        NOT_FOUND,
        None,
    ),
    (
        "pay: amount 0",
        lambda s: s.payments.Pay(payment_pb.PayRequest(order_id="o1", customer_id="c", amount=0)),
        INVALID,
        "amount",
    ),
    (
        "pay: no order id",
        lambda s: s.payments.Pay(payment_pb.PayRequest(order_id="", customer_id="c", amount=1)),
        INVALID,
        "order_id",
    ),
    (
        "cancel payment: empty id",
        lambda s: s.payments.CancelPayment(payment_pb.CancelPaymentRequest(payment_id="")),
        INVALID,
        "payment_id",
    ),
    (
        "cancel payment: unknown id",
        lambda s: s.payments.CancelPayment(payment_pb.CancelPaymentRequest(payment_id=UNKNOWN_ID)),
        NOT_FOUND,
        None,
    ),
    (
        "balance: empty customer",
        lambda s: s.promotion.GetPointBalance(
            promotion_pb.GetPointBalanceRequest(customer_id=""), metadata=as_customer("alice")
        ),
        INVALID,
        "customer_id",
    ),
    (
        "balance: malformed customer",
        lambda s: s.promotion.GetPointBalance(
            promotion_pb.GetPointBalanceRequest(customer_id="bob;drop"),
            metadata=as_customer("alice"),
        ),
        INVALID,
        "customer_id",
    ),
    (
        "clawback: empty order id",
        lambda s: s.promotion.ClawBackPoints(
            promotion_pb.ClawBackPointsRequest(order_id="", customer_id="c")
        ),
        INVALID,
        "order_id",
    ),
    (
        "ship: empty order id",
        lambda s: s.store.ShipOrder(store_pb.ShipOrderRequest(order_id=""), metadata=as_dealer()),
        INVALID,
        "order_id",
    ),
    (
        "ship: unknown order",
        lambda s: s.store.ShipOrder(
            store_pb.ShipOrderRequest(order_id=UNKNOWN_ID), metadata=as_dealer()
        ),
        NOT_FOUND,
        None,
    ),
    (
        "list store orders: negative page size",
        lambda s: s.store.ListStoreOrders(
            store_pb.ListStoreOrdersRequest(page_size=-1), metadata=as_dealer()
        ),
        INVALID,
        "page_size",
    ),
    (
        "list store orders: forged page token",
        lambda s: s.store.ListStoreOrders(
            store_pb.ListStoreOrdersRequest(page_token="forged"), metadata=as_dealer()
        ),
        INVALID,
        "page_token",
    ),
    (
        "history: empty customer",
        lambda s: s.customers.GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(customer_id=""), metadata=as_customer("alice")
        ),
        INVALID,
        "customer_id",
    ),
    (
        "history: customer id too long",
        lambda s: s.customers.GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(customer_id=LONG_ID),
            metadata=as_customer(LONG_ID),
        ),
        INVALID,
        "customer_id",
    ),
]


UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

# Every public RPC without the gateway's verified claims: nobody signed in.
CASES += [
    (
        f"{name}: nobody signed in",
        call,
        UNAUTHENTICATED,
        None,
    )
    for name, call in [
        ("place", lambda s: s.orders.PlaceOrder(order_pb.PlaceOrderRequest(**GOOD_ORDER))),
        ("get order", lambda s: s.orders.GetOrder(order_pb.GetOrderRequest(order_id="o-1"))),
        ("cancel", lambda s: s.orders.CancelOrder(order_pb.CancelOrderRequest(order_id="o-1"))),
        ("payment", lambda s: s.payments.GetPayment(payment_pb.GetPaymentRequest(payment_id="p"))),
        (
            "balance",
            lambda s: s.promotion.GetPointBalance(
                promotion_pb.GetPointBalanceRequest(customer_id="alice")
            ),
        ),
        (
            "history",
            lambda s: s.customers.GetCustomerHistory(
                customer_pb.GetCustomerHistoryRequest(customer_id="alice")
            ),
        ),
        ("list store", lambda s: s.store.ListStoreOrders(store_pb.ListStoreOrdersRequest())),
        ("ship", lambda s: s.store.ShipOrder(store_pb.ShipOrderRequest(order_id="o-1"))),
    ]
]
CASES += [
    (
        "place: claims that are not a token payload",
        lambda s: s.orders.PlaceOrder(
            order_pb.PlaceOrderRequest(**GOOD_ORDER),
            metadata=(("x-phoneseller-claims", "not base64 json"),),
        ),
        UNAUTHENTICATED,
        None,
    ),
    (
        "place: for another customer",
        lambda s: s.orders.PlaceOrder(
            order_pb.PlaceOrderRequest(**GOOD_ORDER), metadata=as_customer("mallory")
        ),
        DENIED,
        None,
    ),
    (
        "place: a dealer placing a customer's order",
        lambda s: s.orders.PlaceOrder(
            order_pb.PlaceOrderRequest(**GOOD_ORDER), metadata=as_dealer()
        ),
        DENIED,
        None,
    ),
    (
        "balance: another customer's",
        lambda s: s.promotion.GetPointBalance(
            promotion_pb.GetPointBalanceRequest(customer_id="alice"), metadata=as_customer("bob")
        ),
        DENIED,
        None,
    ),
    (
        "history: another customer's",
        lambda s: s.customers.GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(customer_id="alice"),
            metadata=as_customer("bob"),
        ),
        DENIED,
        None,
    ),
]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_another_customers_order_is_neither_read_nor_cancelled(system: System) -> None:
    """Ownership needs the data: bob may not read or cancel alice's order, nor its payment; an
    operator reads it; nothing is written by the refusals."""
    order = place_as(system, "alice")
    wait_order(system, order.order_id, "points granted", payback_points=order.amount // 10)
    before = table_counts(system)
    refusals: dict[str, Callable[[], object]] = {
        "get": lambda: system.orders.GetOrder(
            order_pb.GetOrderRequest(order_id=order.order_id), metadata=as_customer("bob")
        ),
        "cancel": lambda: system.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=order.order_id), metadata=as_customer("bob")
        ),
        "cancel as operator": lambda: system.orders.CancelOrder(
            order_pb.CancelOrderRequest(order_id=order.order_id), metadata=as_operator()
        ),
        "payment": lambda: system.payments.GetPayment(
            payment_pb.GetPaymentRequest(payment_id=order.payment_id), metadata=as_customer("bob")
        ),
    }
    for case, call in refusals.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() is DENIED, case
        assert error_details(refused.value)["reason"] == "NOT_THE_CUSTOMERS_OWN", case
    assert table_counts(system) == before, "a refused call changed a database"
    read = system.orders.GetOrder(
        order_pb.GetOrderRequest(order_id=order.order_id), metadata=as_operator()
    )
    assert read.status == order_pb.ORDER_STATUS_PAID


def test_bad_inputs_get_exact_codes_and_write_nothing(system: System) -> None:
    before = table_counts(system)
    failures = []
    for case, call, code, bad_field in CASES:
        try:
            call(system)
        except grpc.RpcError as exc:
            details = error_details(exc)
            if exc.code() is not code:
                failures.append(f"{case}: {exc.code().name}, expected {code.name}")
            elif "reason" not in details:
                failures.append(f"{case}: no ErrorInfo")
            elif bad_field and bad_field not in details.get("fields", []):  # type: ignore[operator]
                failures.append(f"{case}: BadRequest names {details.get('fields')}")
            elif "Traceback" in (exc.details() or ""):
                failures.append(f"{case}: a traceback reached the client")
        else:
            failures.append(f"{case}: accepted")
    assert not failures, "\n".join(failures)
    assert table_counts(system) == before, "a refused call changed a database"
