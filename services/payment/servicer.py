"""PaymentService over gRPC: validate, call a use case, convert to proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from phoneseller.payment.v1 import payment_service_pb2 as pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as pb_grpc

from services.kit import identity
from services.kit.clock import timestamp
from services.kit.validation import MAX_AMOUNT, Violations
from services.payment import usecases
from services.payment.domain import DeclineRule, Payment, PaymentStatus
from services.payment.repository import PaymentUnitOfWork

_STATUS = {
    PaymentStatus.PAID: pb.PAYMENT_STATUS_PAID,
    PaymentStatus.DECLINED: pb.PAYMENT_STATUS_DECLINED,
    PaymentStatus.CANCELLED: pb.PAYMENT_STATUS_CANCELLED,
}


def to_proto(payment: Payment) -> pb.Payment:
    return pb.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        customer_id=payment.customer_id,
        amount=payment.amount,
        status=_STATUS[payment.status],
        decline_reason=payment.decline_reason,
        create_time=timestamp(payment.create_time),
        update_time=timestamp(payment.update_time),
    )


class PaymentServicer(pb_grpc.PaymentServiceServicer):
    def __init__(
        self,
        unit_of_work: Callable[[], PaymentUnitOfWork],
        rule: DeclineRule,
        promotion: usecases.PromotionPort,
    ) -> None:
        self.unit_of_work = unit_of_work
        self.rule = rule
        self.promotion = promotion

    async def Pay(self, request: pb.PayRequest, context: grpc.aio.ServicerContext) -> pb.Payment:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("customer_id", request.customer_id)
        check.in_range("amount", request.amount, 1, MAX_AMOUNT)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        command = usecases.Pay(request.order_id, request.customer_id, request.amount)
        return to_proto(await usecases.pay(self.unit_of_work(), self.rule, command))

    async def GetPayment(
        self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Payment:
        caller = identity.current()
        check = Violations()
        check.identifier("payment_id", request.payment_id)
        check.check()
        payment = await usecases.get_payment(self.unit_of_work(), request.payment_id)
        caller.require_reading(payment.customer_id, "the payments")
        return to_proto(payment)

    async def CancelPayment(
        self, request: pb.CancelPaymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Payment:
        check = Violations()
        check.identifier("payment_id", request.payment_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        payment = await usecases.cancel_payment(
            self.unit_of_work(), self.promotion, request.payment_id, request.request_id
        )
        return to_proto(payment)
