"""`make up` / `make down` keep the data: an order placed before `down` is there after `up`, and
a token signed before `down` is still accepted after `up` (the issuer's key is kept too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from phoneseller.customer.v1 import customer_service_pb2, customer_service_pb2_grpc
from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc

from tests.support.identity import customer_token
from tests.support.stack import gateway_channel, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_data_survives_down_then_up(tmp_path: Path) -> None:
    stack = stack_on_free_ports(tmp_path)
    assert stack.up() == 0
    dora = customer_token(stack.issuer, "dora")
    try:
        with gateway_channel(stack) as channel:
            order = order_service_pb2_grpc.OrderServiceStub(channel).PlaceOrder(
                order_service_pb2.PlaceOrderRequest(
                    customer_id="dora",
                    item="Galaxy S25",
                    quantity=1,
                    unit_price=800_000,
                    request_id="dora-1",
                ),
                timeout=10,
                metadata=dora,
            )

            def points() -> bool:
                got = order_service_pb2_grpc.OrderServiceStub(channel).GetOrder(
                    order_service_pb2.GetOrderRequest(order_id=order.order_id),
                    timeout=5,
                    metadata=dora,
                )
                return bool(got.payback_points == 80_000)

            wait_until(points, timeout=30, message="points granted before down")
    finally:
        assert stack.down() == 0
    assert not stack.running()

    assert stack.up() == 0, "up again on the same folder"
    try:
        with gateway_channel(stack) as channel:
            again = order_service_pb2_grpc.OrderServiceStub(channel).GetOrder(
                order_service_pb2.GetOrderRequest(order_id=order.order_id), timeout=5, metadata=dora
            )
            assert again.status == order_service_pb2.ORDER_STATUS_PAID
            assert again.payback_points == 80_000
            history = customer_service_pb2_grpc.CustomerServiceStub(channel).GetCustomerHistory(
                customer_service_pb2.GetCustomerHistoryRequest(customer_id="dora"),
                timeout=5,
                metadata=dora,
            )
            assert [o.order_id for o in history.orders] == [order.order_id]
            # The same request id after the restart still finds the first order.
            retried = order_service_pb2_grpc.OrderServiceStub(channel).PlaceOrder(
                order_service_pb2.PlaceOrderRequest(
                    customer_id="dora",
                    item="Galaxy S25",
                    quantity=1,
                    unit_price=800_000,
                    request_id="dora-1",
                ),
                timeout=10,
                metadata=dora,
            )
            assert retried.order_id == order.order_id
    finally:
        stack.down()
