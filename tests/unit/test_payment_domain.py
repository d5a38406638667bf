"""Payments and the stand-in gateway's rule: deterministic approvals and declines."""

from __future__ import annotations

import pytest
from phoneseller.payment.v1 import events_pb2

from services.payment.domain import DeclineRule, Payment, PaymentStatus

RULE = DeclineRule(decline_above=5_000_000)


def test_an_amount_up_to_the_limit_is_paid_with_pay_completed() -> None:
    payment = Payment.take("o-1", "alice", 5_000_000, RULE)
    assert payment.status is PaymentStatus.PAID
    (event,) = payment.events
    assert isinstance(event, events_pb2.PayCompleted)
    assert (event.payment_id, event.amount) == (payment.payment_id, 5_000_000)


def test_an_amount_above_the_limit_is_declined_with_the_reason() -> None:
    payment = Payment.take("o-1", "alice", 5_000_001, RULE)
    assert payment.status is PaymentStatus.DECLINED
    (event,) = payment.events
    assert isinstance(event, events_pb2.PayDeclined)
    assert event.reason == payment.decline_reason
    assert "5,000,001" in payment.decline_reason


def test_cancelling_a_paid_payment_announces_pay_cancelled() -> None:
    payment = Payment.take("o-1", "alice", 1_000, RULE)
    cancelled = payment.cancelled()
    assert cancelled.status is PaymentStatus.CANCELLED
    assert [type(e).__name__ for e in cancelled.events] == ["PayCancelled"]
    assert payment.status is PaymentStatus.PAID, "the original is left as it was"


def test_only_a_paid_payment_can_be_cancelled() -> None:
    declined = Payment.take("o-1", "alice", 9_000_000, RULE)
    with pytest.raises(AssertionError):
        declined.cancelled()
