"""The payment's use cases: take a payment, and cancel one once its points are back.

Each takes the unit of work and, where it calls one, the promotion service behind the
`PromotionPort` protocol, so tests run them in-process with a fake promotion and an in-memory
database (tests/unit/test_payment_usecases.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from services.kit import errors
from services.payment.domain import DeclineRule, Payment, PaymentStatus
from services.payment.repository import PaymentUnitOfWork

log = logging.getLogger(__name__)


class PromotionPort(Protocol):
    """The points system as payment sees it. Failures are `errors.ServiceError`s."""

    async def claw_back(self, payment: Payment, request_id: str) -> None:
        """Reverse the points the payment earned (idempotent on the order id)."""


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

    If the points system refuses or cannot answer, nothing is cancelled.
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
    await promotion.claw_back(payment, request_id or f"cancel-{payment.payment_id}")
    async with uow:
        current = await uow.payments.get(payment_id, for_update=True)
        assert current is not None, "payments are never deleted"
        if current.status is PaymentStatus.CANCELLED:
            return current  # a concurrent cancel finished first
        cancelled = current.cancelled()
        await uow.payments.save(cancelled)
        await uow.commit()
    log.info("payment cancelled", extra={"payment_id": payment_id})
    return cancelled
