"""Steps of the seed's story, shared by the end-to-end tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb

from tests.support.identity import as_customer, as_operator
from tests.support.system import System
from tests.support.waiting import wait_until

T = TypeVar("T")


def place(
    system: System,
    customer: str,
    unit_price: int = 1_200_000,
    quantity: int = 1,
    item: str = "Galaxy S25",
    request_id: str | None = None,
) -> order_pb.Order:
    order: order_pb.Order = system.orders.PlaceOrder(
        order_pb.PlaceOrderRequest(
            customer_id=customer,
            item=item,
            quantity=quantity,
            unit_price=unit_price,
            request_id=request_id or uuid.uuid4().hex,
        ),
        timeout=15,
        metadata=as_customer(customer),
    )
    return order


def get_order(system: System, order_id: str) -> order_pb.Order:
    """The order, read as an operator (who may read anyone's)."""
    order: order_pb.Order = system.orders.GetOrder(
        order_pb.GetOrderRequest(order_id=order_id), timeout=5, metadata=as_operator()
    )
    return order


def history(system: System, customer: str) -> customer_pb.CustomerHistory:
    result: customer_pb.CustomerHistory = system.customers.GetCustomerHistory(
        customer_pb.GetCustomerHistoryRequest(customer_id=customer),
        timeout=5,
        metadata=as_customer(customer),
    )
    return result


def balance(system: System, customer: str) -> promotion_pb.PointBalance:
    result: promotion_pb.PointBalance = system.promotion.GetPointBalance(
        promotion_pb.GetPointBalanceRequest(customer_id=customer),
        timeout=5,
        metadata=as_customer(customer),
    )
    return result


def wait_order(
    system: System, order_id: str, message: str, timeout: float = 30, **expected: object
) -> order_pb.Order:
    def matches() -> order_pb.Order | None:
        order = get_order(system, order_id)
        return order if all(getattr(order, k) == v for k, v in expected.items()) else None

    return wait_until(matches, timeout=timeout, interval=0.1, message=message)


def view_of(system: System, customer: str, order_id: str) -> customer_pb.OrderHistory | None:
    for entry in history(system, customer).orders:
        if entry.order_id == order_id:
            return entry
    return None


def wait_view(
    system: System,
    customer: str,
    order_id: str,
    message: str,
    timeout: float = 30,
    **expected: object,
) -> customer_pb.OrderHistory:
    def matches() -> customer_pb.OrderHistory | None:
        entry = view_of(system, customer, order_id)
        if entry is None:
            return None
        return entry if all(getattr(entry, k) == v for k, v in expected.items()) else None

    return wait_until(matches, timeout=timeout, interval=0.1, message=message)


def honouring_retry_info(call: Callable[[], T], timeout: float = 20) -> T:
    """Call, and on UNAVAILABLE with RetryInfo wait the delay it asks for and call again:
    what a well-behaved client of this API does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            delay = error_details(exc).get("retry_delay")
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or not isinstance(delay, float):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)


def error_details(error: grpc.RpcError) -> dict[str, object]:
    """The ErrorInfo reason and the RetryInfo delay (seconds) of a rich gRPC error."""
    status = rpc_status.from_call(error)
    found: dict[str, object] = {}
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found["reason"] = info.reason
            found["metadata"] = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found["retry_delay"] = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["fields"] = [v.field for v in bad.field_violations]
    return found
