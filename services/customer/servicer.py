"""CustomerService over gRPC: validate, call the use case, convert to proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from phoneseller.customer.v1 import customer_service_pb2 as pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as pb_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from services.customer.domain import (
    CustomerHistory,
    OrderStatus,
    OrderView,
    PaymentStatus,
    StoreStatus,
    TimelineEntry,
)
from services.customer.repository import CustomerUnitOfWork
from services.customer.usecases import customer_history
from services.kit import identity
from services.kit.clock import timestamp
from services.kit.validation import Violations

_ORDER_STATUS = {
    OrderStatus.ORDERED: order_pb.ORDER_STATUS_ORDERED,
    OrderStatus.PAID: order_pb.ORDER_STATUS_PAID,
    OrderStatus.PAYMENT_DECLINED: order_pb.ORDER_STATUS_PAYMENT_DECLINED,
    OrderStatus.SHIPPED: order_pb.ORDER_STATUS_SHIPPED,
    OrderStatus.CANCELLED: order_pb.ORDER_STATUS_CANCELLED,
}
_PAYMENT_STATUS = {
    None: payment_pb.PAYMENT_STATUS_UNSPECIFIED,
    PaymentStatus.PAID: payment_pb.PAYMENT_STATUS_PAID,
    PaymentStatus.DECLINED: payment_pb.PAYMENT_STATUS_DECLINED,
    PaymentStatus.CANCELLED: payment_pb.PAYMENT_STATUS_CANCELLED,
}
_STORE_STATUS = {
    None: store_pb.STORE_ORDER_STATUS_UNSPECIFIED,
    StoreStatus.RECEIVED: store_pb.STORE_ORDER_STATUS_RECEIVED,
    StoreStatus.SHIPPED: store_pb.STORE_ORDER_STATUS_SHIPPED,
    StoreStatus.CANCELLED: store_pb.STORE_ORDER_STATUS_CANCELLED,
}


def entry_to_proto(entry: TimelineEntry) -> pb.TimelineEntry:
    return pb.TimelineEntry(
        event_type=entry.event_type.value,
        event_id=entry.event_id,
        occurred_at=timestamp(entry.occurred_at),
        description=entry.description,
    )


def order_to_proto(view: OrderView) -> pb.OrderHistory:
    return pb.OrderHistory(
        order_id=view.order_id,
        item=view.item,
        quantity=view.quantity,
        unit_price=view.unit_price,
        amount=view.amount,
        status=_ORDER_STATUS[view.status],
        payment_status=_PAYMENT_STATUS[view.payment_status],
        store_status=_STORE_STATUS[view.store_status],
        payment_id=view.payment_id,
        points_granted=view.points_granted,
        points_reversed=view.points_reversed,
        timeline=[entry_to_proto(entry) for entry in view.timeline],
        create_time=timestamp(view.create_time),
        update_time=timestamp(view.update_time),
    )


def to_proto(history: CustomerHistory) -> pb.CustomerHistory:
    return pb.CustomerHistory(
        customer_id=history.customer_id,
        orders=[order_to_proto(view) for view in history.orders],
        point_balance=history.point_balance,
    )


class CustomerServicer(pb_grpc.CustomerServiceServicer):
    def __init__(self, unit_of_work: Callable[[], CustomerUnitOfWork]) -> None:
        self.unit_of_work = unit_of_work

    async def GetCustomerHistory(
        self,
        request: pb.GetCustomerHistoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.CustomerHistory:
        caller = identity.current()
        check = Violations()
        check.identifier("customer_id", request.customer_id)
        check.check()
        caller.require_reading(request.customer_id, "the history")
        return to_proto(await customer_history(self.unit_of_work(), request.customer_id))
