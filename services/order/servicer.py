"""OrderService over gRPC: PlaceOrder, GetOrder, CancelOrder — the saga's synchronous half."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from phoneseller.order.v1 import order_service_pb2 as pb
from phoneseller.order.v1 import order_service_pb2_grpc as pb_grpc
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as payment_grpc
from sqlalchemy.exc import IntegrityError

from services.kit import context, errors
from services.kit.clock import timestamp
from services.kit.db import Database
from services.kit.validation import MAX_AMOUNT, Violations
from services.order.domain import Order, OrderStatus
from services.order.repository import OrderRepository

log = logging.getLogger(__name__)

MAX_QUANTITY = 100
MAX_UNIT_PRICE = 100_000_000
#: Safety nets when no mesh is in between; the mesh's route timeouts are the policy.
PAY_DEADLINE_SECONDS = 5.0
CANCEL_DEADLINE_SECONDS = 5.0

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


def _payment_unavailable(
    exc: grpc.aio.AioRpcError, action: str, order_id: str
) -> errors.ServiceError:
    """Pass a failed payment call on to our caller as UNAVAILABLE with RetryInfo.

    A payment-side UNAVAILABLE (e.g. the points system is overloaded) keeps its reason and
    retry delay; a payment service we cannot reach at all becomes PAYMENT_UNAVAILABLE.
    """
    status = errors.from_rpc_error(exc)
    delay = errors.retry_delay_seconds(status) or 1.0
    reason = "PAYMENT_UNAVAILABLE"
    for detail in status.details if status else ():
        from google.rpc import error_details_pb2

        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or reason
    message = (
        status.message
        if status and status.message
        else f"the payment service cannot {action} now; try again shortly"
    )
    return errors.unavailable(
        reason,
        message,
        retry_after_seconds=delay,
        metadata={"order_id": order_id, "upstream_code": exc.code().name},
    )


class OrderServicer(pb_grpc.OrderServiceServicer):
    def __init__(self, database: Database, payment: payment_grpc.PaymentServiceStub) -> None:
        self.database = database
        self.payment = payment

    async def PlaceOrder(
        self,
        request: pb.PlaceOrderRequest,
        context_: grpc.aio.ServicerContext,
    ) -> pb.Order:
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

        order = await self._find_or_record(request)
        context.correlation_id.set(order.order_id)
        if order.status is not OrderStatus.ORDERED:
            return to_proto(order)  # a retry of a request that completed
        return to_proto(await self._pay(order))

    async def _find_or_record(self, request: pb.PlaceOrderRequest) -> Order:
        """The order for this request id, recording a new one (and Ordered) if there is none."""
        if request.request_id:
            async with self.database.unit_of_work(read_only=True) as uow:
                existing = await OrderRepository(uow.connection).by_request_id(request.request_id)
            if existing is not None:
                return self._same_request(existing, request)
        order = Order.place(
            request.customer_id,
            request.item,
            request.quantity,
            request.unit_price,
            request.request_id,
        )
        try:
            async with self.database.unit_of_work() as uow:
                await OrderRepository(uow.connection).add(order)
                uow.emit(*order.events)
                await uow.commit()
        except IntegrityError:
            # The same request id arrived twice at once; the other call recorded the order.
            async with self.database.unit_of_work(read_only=True) as uow:
                existing = await OrderRepository(uow.connection).by_request_id(request.request_id)
            assert existing is not None
            return self._same_request(existing, request)
        log.info("order placed", extra={"order_id": order.order_id, "amount": order.amount})
        return order

    @staticmethod
    def _same_request(existing: Order, request: pb.PlaceOrderRequest) -> Order:
        if not existing.same_request(
            request.customer_id, request.item, request.quantity, request.unit_price
        ):
            raise errors.already_exists(
                "REQUEST_ID_REUSED",
                f"request_id {request.request_id!r} was used for a different order",
                {"request_id": request.request_id, "order_id": existing.order_id},
            )
        return existing

    async def _pay(self, order: Order) -> Order:
        """Charge the order (idempotent on its id) and record the outcome."""
        try:
            payment = await self.payment.Pay(
                payment_pb.PayRequest(
                    order_id=order.order_id,
                    customer_id=order.customer_id,
                    amount=order.amount,
                    request_id=order.order_id,
                ),
                timeout=PAY_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # The order stays ORDERED: a retry with the same request_id pays it, and if the
            # payment did go through, its PayCompleted event marks the order PAID anyway.
            log.warning(
                "payment failed; order left ORDERED",
                extra={"upstream": exc.code().name, "upstream_details": exc.details()},
            )
            raise _payment_unavailable(exc, "take the payment", order.order_id) from None
        declined = payment.status == payment_pb.PAYMENT_STATUS_DECLINED
        return await self._update(
            order.order_id,
            lambda o: (
                o.mark_declined(payment.payment_id, payment.decline_reason)
                if declined
                else o.mark_paid(payment.payment_id)
            ),
        )

    async def _update(self, order_id: str, change: Callable[[Order], object]) -> Order:
        """Apply `change` to the current order in its own transaction, emitting its events."""
        async with self.database.unit_of_work() as uow:
            orders = OrderRepository(uow.connection)
            order = await orders.get(order_id, for_update=True)
            if order is None:
                raise errors.not_found("order", order_id)
            change(order)
            await orders.save(order)
            uow.emit(*order.events)
            await uow.commit()
        return order

    async def GetOrder(
        self,
        request: pb.GetOrderRequest,
        context_: grpc.aio.ServicerContext,
    ) -> pb.Order:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.check()
        return to_proto(await self._get(request.order_id))

    async def _get(self, order_id: str) -> Order:
        async with self.database.unit_of_work(read_only=True) as uow:
            order = await OrderRepository(uow.connection).get(order_id)
        if order is None:
            raise errors.not_found("order", order_id)
        return order

    async def CancelOrder(
        self,
        request: pb.CancelOrderRequest,
        context_: grpc.aio.ServicerContext,
    ) -> pb.Order:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        order = await self._get(request.order_id)
        if order.status is OrderStatus.CANCELLED:
            return to_proto(order)
        if order.status is OrderStatus.SHIPPED:
            raise errors.failed_precondition(
                "ORDER_ALREADY_SHIPPED",
                "a shipped order can no longer be cancelled",
                f"orders/{order.order_id}",
                {"order_id": order.order_id},
            )
        if order.status is OrderStatus.ORDERED:
            raise errors.failed_precondition(
                "ORDER_PAYMENT_PENDING",
                "the order's payment has not completed yet; place the order again with the "
                "same request_id to finish it, then cancel",
                f"orders/{order.order_id}",
                {"order_id": order.order_id},
            )
        if order.status is OrderStatus.PAID:
            await self._cancel_payment(order, request.request_id)
        cancelled = await self._update(
            order.order_id, lambda o: o.cancel("cancelled by the customer")
        )
        log.info("order cancelled", extra={"order_id": order.order_id})
        return to_proto(cancelled)

    async def _cancel_payment(self, order: Order, request_id: str) -> None:
        try:
            await self.payment.CancelPayment(
                payment_pb.CancelPaymentRequest(
                    payment_id=order.payment_id, request_id=request_id or f"cancel-{order.order_id}"
                ),
                timeout=CANCEL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise errors.failed_precondition(
                    "PAYMENT_NOT_CANCELLABLE",
                    exc.details() or "the payment cannot be cancelled",
                    f"orders/{order.order_id}",
                    {"order_id": order.order_id},
                ) from None
            log.warning(
                "payment cancel failed; order left as it was",
                extra={"upstream": exc.code().name, "upstream_details": exc.details()},
            )
            raise _payment_unavailable(exc, "cancel the payment", order.order_id) from None
