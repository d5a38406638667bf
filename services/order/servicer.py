"""OrderService over gRPC: who calls, validate, call a use case, convert to proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from phoneseller.order.v1 import order_service_pb2 as pb
from phoneseller.order.v1 import order_service_pb2_grpc as pb_grpc

from services.kit import identity
from services.kit.clock import timestamp
from services.kit.validation import MAX_AMOUNT, Violations
from services.order import usecases
from services.order.domain import Order, OrderStatus
from services.order.repository import OrderUnitOfWork

MAX_QUANTITY = 100
MAX_UNIT_PRICE = 100_000_000

_STATUS = {
    OrderStatus.ORDERED: pb.ORDER_STATUS_ORDERED,
    OrderStatus.PAID: pb.ORDER_STATUS_PAID,
    OrderStatus.PAYMENT_DECLINED: pb.ORDER_STATUS_PAYMENT_DECLINED,
    OrderStatus.SHIPPED: pb.ORDER_STATUS_SHIPPED,
    OrderStatus.CANCELLED: pb.ORDER_STATUS_CANCELLED,
}


def to_proto(order: Order) -> pb.Order:
    return pb.Order(
        order_id=order.order_id,
        customer_id=order.customer_id,
        item=order.item,
        quantity=order.quantity,
        unit_price=order.unit_price,
        amount=order.amount,
        status=_STATUS[order.status],
        payment_id=order.payment_id,
        payback_points=order.payback_points,
        decline_reason=order.decline_reason,
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
    )


class OrderServicer(pb_grpc.OrderServiceServicer):
    def __init__(
        self, unit_of_work: Callable[[], OrderUnitOfWork], payment: usecases.PaymentPort
    ) -> None:
        self.unit_of_work = unit_of_work
        self.payment = payment

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        caller = identity.current()
        check = Violations()
        check.identifier("customer_id", request.customer_id)
        check.text("item", request.item, max_length=100)
        check.in_range("quantity", request.quantity, 1, MAX_QUANTITY)
        check.in_range("unit_price", request.unit_price, 1, MAX_UNIT_PRICE)
        check.identifier("request_id", request.request_id, required=False)
        if (
            0 < request.quantity <= MAX_QUANTITY
            and request.unit_price > 0
            and request.quantity * request.unit_price > MAX_AMOUNT
        ):
            check.add("unit_price", "quantity × unit_price exceeds the largest payable amount")
        check.check()
        caller.require_acting_for(request.customer_id, "orders")
        command = usecases.PlaceOrder(
            customer_id=request.customer_id,
            item=request.item,
            quantity=request.quantity,
            unit_price=request.unit_price,
            request_id=request.request_id,
        )
        return to_proto(await usecases.place_order(self.unit_of_work(), self.payment, command))

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        caller = identity.current()
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.check()
        order = await usecases.get_order(self.unit_of_work(), request.order_id)
        caller.require_reading(order.customer_id, "the orders")
        return to_proto(order)

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        caller = identity.current()
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        order = await usecases.cancel_order(
            self.unit_of_work(), self.payment, request.order_id, request.request_id, caller
        )
        return to_proto(order)
