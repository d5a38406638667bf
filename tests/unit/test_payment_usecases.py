"""The payment's use cases in-process: a fake points system and an in-memory database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from services.kit import errors
from services.kit.clock import utcnow
from services.kit.db import Database
from services.payment import usecases
from services.payment.domain import CancellationRequest, DeclineRule, Payment, PaymentStatus
from services.payment.repository import PaymentUnitOfWork, metadata
from services.payment.usecases import Pay
from tests.support.in_memory import in_memory_database, outbox_types

RULE = DeclineRule(decline_above=5_000_000)


UNAVAILABLE = errors.unavailable("PROMOTION_UNAVAILABLE", "down", retry_after_seconds=1.0)


class FakePromotion:
    """The points system: claws back, or refuses, or is unreachable, as the test says."""

    def __init__(self) -> None:
        self.refusal: errors.ServiceError | None = None
        #: Claw back, then lose the answer (a timeout after the points system acted).
        self.answer_lost = False
        self.unreachable = False
        self.clawbacks: list[tuple[str, str]] = []
        self.reversed: set[str] = set()

    async def claw_back(self, payment: Payment, request_id: str) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.clawbacks.append((payment.order_id, request_id))
        self.reversed.add(payment.order_id)
        if self.answer_lost:
            raise UNAVAILABLE

    async def clawed_back(self, payment: Payment) -> bool:
        if self.unreachable:
            raise UNAVAILABLE
        return payment.order_id in self.reversed


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    async with in_memory_database(metadata) as database:
        yield database


@pytest.fixture
def promotion() -> FakePromotion:
    return FakePromotion()


async def pay(database: Database, order_id: str = "o-1", amount: int = 1_000_000) -> Payment:
    return await usecases.pay(PaymentUnitOfWork(database), RULE, Pay(order_id, "alice", amount))


async def cancel(database: Database, promotion: FakePromotion, payment: Payment) -> Payment:
    return await usecases.cancel_payment(
        PaymentUnitOfWork(database), promotion, payment.payment_id, ""
    )


async def test_a_payment_is_taken_with_its_event(database: Database) -> None:
    payment = await pay(database)
    assert payment.status is PaymentStatus.PAID
    assert await usecases.get_payment(PaymentUnitOfWork(database), payment.payment_id) == payment
    assert await outbox_types(database) == ["PayCompleted"]


async def test_an_amount_above_the_limit_is_declined(database: Database) -> None:
    payment = await pay(database, amount=5_000_001)
    assert payment.status is PaymentStatus.DECLINED
    assert "above the approval limit" in payment.decline_reason
    assert await outbox_types(database) == ["PayDeclined"]


async def test_paying_an_order_again_gives_the_same_payment(database: Database) -> None:
    first = await pay(database)
    assert await pay(database) == first
    assert await outbox_types(database) == ["PayCompleted"], "charged once"


async def test_paying_an_order_again_with_other_terms_is_refused(database: Database) -> None:
    await pay(database)
    with pytest.raises(errors.ServiceError) as refused:
        await pay(database, amount=2_000_000)
    assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.reason == "PAYMENT_EXISTS_WITH_OTHER_TERMS"


async def test_cancelling_claws_the_points_back_first(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    cancelled = await usecases.cancel_payment(
        PaymentUnitOfWork(database), promotion, payment.payment_id, "r-1"
    )
    assert cancelled.status is PaymentStatus.CANCELLED
    assert promotion.clawbacks == [("o-1", "r-1")]
    assert await outbox_types(database) == ["PayCompleted", "PayCancelled"]
    again = await usecases.cancel_payment(
        PaymentUnitOfWork(database), promotion, payment.payment_id, "r-2"
    )
    assert again.status is PaymentStatus.CANCELLED
    assert len(promotion.clawbacks) == 1


@pytest.mark.parametrize(
    "refusal",
    [UNAVAILABLE, errors.failed_precondition("CLAWBACK_REFUSED", "no", "payments/x")],
    ids=["unavailable", "refused"],
)
async def test_when_the_clawback_fails_nothing_is_cancelled(
    database: Database, promotion: FakePromotion, refusal: errors.ServiceError
) -> None:
    payment = await pay(database)
    promotion.refusal = refusal
    with pytest.raises(errors.ServiceError) as failed:
        await usecases.cancel_payment(
            PaymentUnitOfWork(database), promotion, payment.payment_id, ""
        )
    assert failed.value is refusal
    current = await usecases.get_payment(PaymentUnitOfWork(database), payment.payment_id)
    assert current.status is PaymentStatus.PAID
    assert await outbox_types(database) == ["PayCompleted"]


async def test_a_declined_payment_cannot_be_cancelled(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database, amount=9_000_000)
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.cancel_payment(
            PaymentUnitOfWork(database), promotion, payment.payment_id, ""
        )
    assert refused.value.reason == "PAYMENT_DECLINED"
    assert promotion.clawbacks == []


async def test_an_unknown_payment_is_not_found(
    database: Database, promotion: FakePromotion
) -> None:
    with pytest.raises(errors.ServiceError) as missing:
        await usecases.cancel_payment(PaymentUnitOfWork(database), promotion, "nope", "")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


async def pending(database: Database) -> list[CancellationRequest]:
    async with PaymentUnitOfWork(database).reading() as uow:
        return await uow.cancellations.due(utcnow() + timedelta(days=1), 100)


async def finish_later(database: Database, promotion: FakePromotion) -> int:
    """The finisher's round once the grace period of every request has passed."""
    later = utcnow() + CancellationRequest.GRACE + timedelta(seconds=1)
    return await usecases.finish_cancellations(PaymentUnitOfWork(database), promotion, now=later)


async def test_a_lost_clawback_answer_is_finished_not_left_half_done(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    promotion.answer_lost = True
    with pytest.raises(errors.ServiceError) as failed:
        await cancel(database, promotion, payment)
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE
    assert promotion.reversed == {"o-1"}, "the points came back, the answer did not"
    assert (await usecases.get_payment(PaymentUnitOfWork(database), payment.payment_id)).status is (
        PaymentStatus.PAID
    )
    assert [r.payment_id for r in await pending(database)] == [payment.payment_id]
    # Not within the grace period: the clawback's answer may still be on its way.
    assert await usecases.finish_cancellations(PaymentUnitOfWork(database), promotion) == 0

    assert await finish_later(database, promotion) == 1
    done = await usecases.get_payment(PaymentUnitOfWork(database), payment.payment_id)
    assert done.status is PaymentStatus.CANCELLED
    assert await outbox_types(database) == ["PayCompleted", "PayCancelled"]
    assert await pending(database) == []


async def test_a_clawback_that_never_acted_is_dropped(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    promotion.refusal = UNAVAILABLE  # e.g. the circuit breaker: promotion never saw it
    with pytest.raises(errors.ServiceError):
        await cancel(database, promotion, payment)
    promotion.refusal = None
    assert await finish_later(database, promotion) == 1
    kept = await usecases.get_payment(PaymentUnitOfWork(database), payment.payment_id)
    assert kept.status is PaymentStatus.PAID
    assert await outbox_types(database) == ["PayCompleted"]
    assert await pending(database) == []


async def test_while_promotion_cannot_say_the_request_waits_and_backs_off(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    promotion.refusal = UNAVAILABLE
    with pytest.raises(errors.ServiceError):
        await cancel(database, promotion, payment)
    promotion.unreachable = True
    assert await finish_later(database, promotion) == 0
    (waiting,) = await pending(database)
    assert waiting.attempts == 1
    assert waiting.next_attempt_at > utcnow() + CancellationRequest.GRACE


async def test_a_retried_cancel_after_a_lost_answer_completes_at_once(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    promotion.answer_lost = True
    with pytest.raises(errors.ServiceError):
        await cancel(database, promotion, payment)
    promotion.answer_lost = False
    cancelled = await cancel(database, promotion, payment)
    assert cancelled.status is PaymentStatus.CANCELLED
    assert await pending(database) == []
    assert await finish_later(database, promotion) == 0


async def test_a_refused_clawback_leaves_no_request_behind(
    database: Database, promotion: FakePromotion
) -> None:
    payment = await pay(database)
    promotion.refusal = errors.failed_precondition("CLAWBACK_REFUSED", "no", "payments/x")
    with pytest.raises(errors.ServiceError):
        await cancel(database, promotion, payment)
    assert await pending(database) == []
