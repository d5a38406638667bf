"""The services the order calls, over gRPC through the mesh: payment."""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as payment_grpc

from services.kit import clients, errors
from services.order.domain import Order
from services.order.usecases import PaymentOutcome

log = logging.getLogger(__name__)

#: Safety nets when no mesh is in between; the mesh's route timeouts are the policy.
PAY_DEADLINE_SECONDS = 5.0
CANCEL_DEADLINE_SECONDS = 5.0


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


class PaymentClient:
    """`PaymentPort` over gRPC."""

    def __init__(self, stub: payment_grpc.PaymentServiceStub) -> None:
        self.stub = stub

    async def pay(self, order: Order) -> PaymentOutcome:
        try:
            payment = await self.stub.Pay(
                payment_pb.PayRequest(
                    order_id=order.order_id,
                    customer_id=order.customer_id,
                    amount=order.amount,
                    request_id=order.order_id,
                ),
                timeout=PAY_DEADLINE_SECONDS,
                metadata=clients.outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise  # our request was wrong: a bug, reported as INTERNAL
            log.warning(
                "payment failed; order left ORDERED",
                extra={"upstream": exc.code().name, "upstream_details": exc.details()},
            )
            raise _payment_unavailable(exc, "take the payment", order.order_id) from None
        return PaymentOutcome(
            payment_id=payment.payment_id,
            declined=payment.status == payment_pb.PAYMENT_STATUS_DECLINED,
            decline_reason=payment.decline_reason,
        )

    async def cancel(self, order: Order, request_id: str) -> None:
        try:
            await self.stub.CancelPayment(
                payment_pb.CancelPaymentRequest(payment_id=order.payment_id, request_id=request_id),
                timeout=CANCEL_DEADLINE_SECONDS,
                metadata=clients.outgoing_metadata(),
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
