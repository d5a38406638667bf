"""Payments and the rule that approves or declines them. No I/O here."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from phoneseller.payment.v1 import events_pb2

from services.kit.clock import utcnow
from services.kit.events import new_event


class PaymentStatus(enum.StrEnum):
    PAID = "PAID"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class DeclineRule:
    """Deterministic, so tests can drive both paths: amounts above the limit are declined."""

    decline_above: int

    def decline_reason(self, amount: int) -> str:
        if amount > self.decline_above:
            return f"amount {amount:,} won is above the approval limit of {self.decline_above:,}"
        return ""


@dataclass
class Payment:
    payment_id: str
    order_id: str
    customer_id: str
    amount: int
    status: PaymentStatus
    decline_reason: str
    create_time: datetime
    update_time: datetime
    events: list[Message] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def take(cls, order_id: str, customer_id: str, amount: int, rule: DeclineRule) -> Payment:
        """Charge an order: PAID (PayCompleted) or DECLINED (PayDeclined)."""
        now = utcnow()
        reason = rule.decline_reason(amount)
        payment = cls(
            payment_id=str(uuid.uuid4()),
            order_id=order_id,
            customer_id=customer_id,
            amount=amount,
            status=PaymentStatus.DECLINED if reason else PaymentStatus.PAID,
            decline_reason=reason,
            create_time=now,
            update_time=now,
        )
        common: dict[str, Any] = {
            "order_id": order_id,
            "customer_id": customer_id,
            "payment_id": payment.payment_id,
            "amount": amount,
        }
        payment.events.append(
            new_event(events_pb2.PayDeclined, reason=reason, **common)
            if reason
            else new_event(events_pb2.PayCompleted, **common)
        )
        return payment

    def cancelled(self) -> Payment:
        """The payment after its points were clawed back: CANCELLED, with PayCancelled."""
        assert self.status is PaymentStatus.PAID
        result = replace(self, status=PaymentStatus.CANCELLED, update_time=utcnow(), events=[])
        result.events.append(
            new_event(
                events_pb2.PayCancelled,
                order_id=self.order_id,
                customer_id=self.customer_id,
                payment_id=self.payment_id,
                amount=self.amount,
            )
        )
        return result


@dataclass(frozen=True)
class CancellationRequest:
    """A cancel of a payment that was asked for and has not ended yet.

    Written before the points are clawed back: if the clawback's answer is lost (a timeout, or
    this process dies), the request tells the finisher to look at the grant later and either
    finish the cancellation (the points did come back) or drop it (they did not). The payment
    is never left PAID with its points gone.
    """

    payment_id: str
    request_id: str
    requested_at: datetime
    attempts: int
    next_attempt_at: datetime

    #: Answers to a clawback may still arrive this long after it was sent: the mesh's 610 ms
    #: route timeout, plus the promotion's commit of an attempt it had already taken.
    GRACE = timedelta(seconds=5)
    #: How long the finisher waits between attempts at most, when promotion cannot answer.
    MAX_BACKOFF = timedelta(seconds=30)

    @classmethod
    def new(cls, payment_id: str, request_id: str, now: datetime) -> CancellationRequest:
        return cls(payment_id, request_id, now, 0, now + cls.GRACE)

    def postponed(self, now: datetime) -> CancellationRequest:
        """The request after an attempt that could not reach promotion: back off."""
        delay = min(timedelta(seconds=2**self.attempts), self.MAX_BACKOFF)
        return replace(self, attempts=self.attempts + 1, next_attempt_at=now + delay)
