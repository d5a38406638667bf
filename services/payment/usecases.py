"""The payment's use cases: take a payment, and cancel one once its points are back.

Each takes the unit of work and, where it calls one, the promotion service behind the
`PromotionPort` protocol, so tests run them in-process with a fake promotion and an in-memory
database (tests/unit/test_payment_usecases.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc

from services.kit import errors
from services.kit.clock import utcnow
from services.payment.domain import CancellationRequest, DeclineRule, Payment, PaymentStatus
from services.payment.repository import PaymentUnitOfWork

log = logging.getLogger(__name__)


class PromotionPort(Protocol):
    """The points system as payment sees it. Failures are `errors.ServiceError`s."""

    async def claw_back(self, payment: Payment, request_id: str) -> None:
        """Reverse the points the payment earned (idempotent on the order id)."""

    async def clawed_back(self, payment: Payment) -> bool:
        """Whether the points of the payment's order have been reversed."""


@dataclass(frozen=True)
class Pay:
    order_id: str
    customer_id: str
    amount: int


async def pay(uow: PaymentUnitOfWork, rule: DeclineRule, command: Pay) -> Payment:
    """Take the order's payment (PAID or DECLINED); the same order again gets the same one."""
    async with uow:
        payment = Payment.take(command.order_id, command.customer_id, command.amount, rule)
        if not await uow.payments.add(payment):
            existing = await uow.payments.for_order(command.order_id)
            assert existing is not None, "the insert conflicted, so the payment exists"
            payment = _same_order(existing, command)
        await uow.commit()
    return payment


def _same_order(existing: Payment, command: Pay) -> Payment:
    if (existing.customer_id, existing.amount) != (command.customer_id, command.amount):
        raise errors.already_exists(
            "PAYMENT_EXISTS_WITH_OTHER_TERMS",
            f"order {command.order_id!r} was already paid with other customer or amount",
            {"order_id": command.order_id, "payment_id": existing.payment_id},
        )
    return existing


async def get_payment(uow: PaymentUnitOfWork, payment_id: str) -> Payment:
    async with uow.reading():
        payment = await uow.payments.get(payment_id)
    if payment is None:
        raise errors.not_found("payment", payment_id)
    return payment


async def cancel_payment(
    uow: PaymentUnitOfWork, promotion: PromotionPort, payment_id: str, request_id: str
) -> Payment:
    """Claw the points back, then cancel the payment (the seed's synchronous rule).

    The request is recorded first. If the points system refuses, the request is dropped and
    nothing is cancelled. If it cannot answer, the caller is told to try again shortly; should
    the clawback have taken effect all the same (its answer lost, or this process gone), the
    finisher sees the reversed grant and finishes the cancel (`finish_cancellations`).
    """
    payment = await get_payment(uow, payment_id)
    if payment.status is PaymentStatus.CANCELLED:
        return payment
    if payment.status is PaymentStatus.DECLINED:
        raise errors.failed_precondition(
            "PAYMENT_DECLINED",
            "a declined payment cannot be cancelled",
            f"payments/{payment.payment_id}",
            {"payment_id": payment.payment_id},
        )
    request = CancellationRequest.new(payment_id, request_id or f"cancel-{payment_id}", utcnow())
    async with uow:
        await uow.cancellations.save(request)
        await uow.commit()
    try:
        await promotion.claw_back(payment, request.request_id)
    except errors.ServiceError as exc:
        if exc.code is grpc.StatusCode.FAILED_PRECONDITION:
            async with uow:  # refused: there is nothing to finish
                await uow.cancellations.end(request)
                await uow.commit()
        raise
    return await _finish(uow, payment_id)


async def _finish(uow: PaymentUnitOfWork, payment_id: str) -> Payment:
    """Cancel the payment whose points are back, and forget its request."""
    async with uow:
        current = await uow.payments.get(payment_id, for_update=True)
        assert current is not None, "payments are never deleted"
        await uow.cancellations.end_any(payment_id)
        if current.status is not PaymentStatus.PAID:
            await uow.commit()
            return current  # a concurrent cancel finished first
        cancelled = current.cancelled()
        await uow.payments.save(cancelled)
        await uow.commit()
    log.info("payment cancelled", extra={"payment_id": payment_id})
    return cancelled


async def finish_cancellations(
    uow: PaymentUnitOfWork,
    promotion: PromotionPort,
    limit: int = 50,
    now: datetime | None = None,
) -> int:
    """Settle the cancel requests whose clawback ended without an answer; returns how many.

    For each request past its grace period: if the order's points were reversed, the cancel
    is finished (PayCancelled); if not, the request is dropped (the caller was told nothing was
    done and to try again); if promotion still cannot answer, it is tried again later.
    """
    now = now or utcnow()
    async with uow.reading():
        due = await uow.cancellations.due(now, limit)
    settled = 0
    for request in due:
        payment = await get_payment(uow, request.payment_id)
        try:
            reversed_ = payment.status is PaymentStatus.PAID and await promotion.clawed_back(
                payment
            )
        except errors.ServiceError:
            async with uow:
                await uow.cancellations.postpone(request.postponed(now))
                await uow.commit()
            continue
        if reversed_:
            await _finish(uow, request.payment_id)
            log.info(
                "cancellation finished after a lost answer",
                extra={"payment_id": payment.payment_id},
            )
        else:
            async with uow:
                await uow.cancellations.end(request)
                await uow.commit()
            log.info(
                "cancellation dropped: its points were not clawed back",
                extra={"payment_id": payment.payment_id, "status": payment.status.value},
            )
        settled += 1
    return settled
