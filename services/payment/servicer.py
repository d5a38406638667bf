"""PaymentService over gRPC: Pay and CancelPayment (internal, from order) and GetPayment."""

from __future__ import annotations

import logging

import grpc
from phoneseller.payment.v1 import payment_service_pb2 as pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as pb_grpc
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as promotion_grpc
from sqlalchemy.exc import IntegrityError

from services.kit import errors
from services.kit.clock import timestamp
from services.kit.db import Database
from services.kit.validation import MAX_AMOUNT, Violations
from services.payment.domain import DeclineRule, Payment, PaymentStatus
from services.payment.repository import PaymentRepository

log = logging.getLogger(__name__)

#: A safety net when no mesh is in between; the mesh's route timeout (610 ms) is the policy.
CLAWBACK_DEADLINE_SECONDS = 2.0

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
        self, database: Database, rule: DeclineRule, promotion: promotion_grpc.PromotionServiceStub
    ) -> None:
        self.database = database
        self.rule = rule
        self.promotion = promotion

    async def Pay(
        self,
        request: pb.PayRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Payment:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("customer_id", request.customer_id)
        check.in_range("amount", request.amount, 1, MAX_AMOUNT)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        try:
            async with self.database.unit_of_work() as uow:
                payments = PaymentRepository(uow.connection)
                existing = await payments.for_order(request.order_id)
                if existing is not None:
                    return to_proto(self._same_order(existing, request))
                payment = Payment.take(
                    request.order_id, request.customer_id, request.amount, self.rule
                )
                await payments.add(payment)
                uow.emit(*payment.events)
                await uow.commit()
        except IntegrityError:
            # A concurrent Pay for the same order (a retry through the mesh) won the race.
            async with self.database.unit_of_work(read_only=True) as uow:
                existing = await PaymentRepository(uow.connection).for_order(request.order_id)
            assert existing is not None
            return to_proto(self._same_order(existing, request))
        log.info(
            "payment taken",
            extra={"payment_id": payment.payment_id, "status": payment.status.value},
        )
        return to_proto(payment)

    @staticmethod
    def _same_order(existing: Payment, request: pb.PayRequest) -> Payment:
        if (existing.customer_id, existing.amount) != (request.customer_id, request.amount):
            raise errors.already_exists(
                "PAYMENT_EXISTS_WITH_OTHER_TERMS",
                f"order {request.order_id!r} was already paid with other customer or amount",
                {"order_id": request.order_id, "payment_id": existing.payment_id},
            )
        return existing

    async def GetPayment(
        self,
        request: pb.GetPaymentRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Payment:
        check = Violations()
        check.identifier("payment_id", request.payment_id)
        check.check()
        async with self.database.unit_of_work(read_only=True) as uow:
            payment = await PaymentRepository(uow.connection).get(request.payment_id)
        if payment is None:
            raise errors.not_found("payment", request.payment_id)
        return to_proto(payment)

    async def CancelPayment(
        self,
        request: pb.CancelPaymentRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.Payment:
        check = Violations()
        check.identifier("payment_id", request.payment_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        async with self.database.unit_of_work(read_only=True) as uow:
            payment = await PaymentRepository(uow.connection).get(request.payment_id)
        if payment is None:
            raise errors.not_found("payment", request.payment_id)
        if payment.status is PaymentStatus.CANCELLED:
            return to_proto(payment)
        if payment.status is PaymentStatus.DECLINED:
            raise errors.failed_precondition(
                "PAYMENT_DECLINED",
                "a declined payment cannot be cancelled",
                f"payments/{payment.payment_id}",
                {"payment_id": payment.payment_id},
            )
        # The points must come back before the money does (the seed's synchronous rule).
        await self._claw_back_points(payment, request.request_id)
        cancelled = payment.cancelled()
        async with self.database.unit_of_work() as uow:
            payments = PaymentRepository(uow.connection)
            if not await payments.save_status(cancelled, expected=PaymentStatus.PAID):
                current = await payments.get(payment.payment_id)
                assert current is not None
                return to_proto(current)  # a concurrent cancel finished first
            uow.emit(*cancelled.events)
            await uow.commit()
        log.info("payment cancelled", extra={"payment_id": payment.payment_id})
        return to_proto(cancelled)

    async def _claw_back_points(self, payment: Payment, request_id: str) -> None:
        try:
            await self.promotion.ClawBackPoints(
                promotion_pb.ClawBackPointsRequest(
                    order_id=payment.order_id,
                    customer_id=payment.customer_id,
                    request_id=request_id or f"cancel-{payment.payment_id}",
                ),
                timeout=CLAWBACK_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                # The points system answered, and retrying will not change its mind.
                raise errors.failed_precondition(
                    "CLAWBACK_REFUSED",
                    exc.details() or "the points system refused the clawback",
                    f"payments/{payment.payment_id}",
                    {"payment_id": payment.payment_id},
                ) from None
            delay = errors.retry_delay_seconds(errors.from_rpc_error(exc)) or 1.0
            log.warning(
                "clawback failed; payment left as it was",
                extra={
                    "payment_id": payment.payment_id,
                    "upstream": exc.code().name,
                    "upstream_details": exc.details(),
                },
            )
            raise errors.unavailable(
                "PROMOTION_UNAVAILABLE",
                "the points system cannot claw back the points now; nothing was cancelled, "
                "try again shortly",
                retry_after_seconds=delay,
                metadata={"payment_id": payment.payment_id, "upstream_code": exc.code().name},
            ) from None
