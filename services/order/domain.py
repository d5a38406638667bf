"""Orders and how the saga's events move them. No I/O here.

Status only moves forward: ORDERED → PAID or PAYMENT_DECLINED → SHIPPED, and CANCELLED ends
everything. Events may arrive twice or out of order, so each transition checks where the
order is rather than assuming where it was.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message
from phoneseller.order.v1 import events_pb2

from services.kit.clock import utcnow
from services.kit.events import new_event


class OrderStatus(enum.StrEnum):
    ORDERED = "ORDERED"
    PAID = "PAID"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


#: How far along each status is; a transition never goes to a lower rank.
_RANK = {
    OrderStatus.ORDERED: 0,
    OrderStatus.PAID: 1,
    OrderStatus.PAYMENT_DECLINED: 1,
    OrderStatus.SHIPPED: 2,
    OrderStatus.CANCELLED: 3,
}


@dataclass
class Order:
    order_id: str
    customer_id: str
    item: str
    quantity: int
    unit_price: int
    status: OrderStatus
    create_time: datetime
    update_time: datetime
    request_id: str = ""
    payment_id: str = ""
    decline_reason: str = ""
    points_granted: int = 0
    points_reversed: int = 0
    events: list[Message] = field(default_factory=list, compare=False, repr=False)

    @property
    def amount(self) -> int:
        """What the customer pays, in won: unit price × quantity (the seed ignored quantity)."""
        return self.unit_price * self.quantity

    @property
    def payback_points(self) -> int:
        """Points this order holds now: none once cancelled, whatever the events' timing."""
        if self.status is OrderStatus.CANCELLED:
            return 0
        return max(self.points_granted - self.points_reversed, 0)

    @classmethod
    def place(
        cls, customer_id: str, item: str, quantity: int, unit_price: int, request_id: str
    ) -> Order:
        now = utcnow()
        order = cls(
            order_id=str(uuid.uuid4()),
            customer_id=customer_id,
            item=item,
            quantity=quantity,
            unit_price=unit_price,
            status=OrderStatus.ORDERED,
            create_time=now,
            update_time=now,
            request_id=request_id,
        )
        order.events.append(
            new_event(
                events_pb2.Ordered,
                order_id=order.order_id,
                customer_id=customer_id,
                item=item,
                quantity=quantity,
                unit_price=unit_price,
                amount=order.amount,
            )
        )
        return order

    def same_request(self, customer_id: str, item: str, quantity: int, unit_price: int) -> bool:
        return (self.customer_id, self.item, self.quantity, self.unit_price) == (
            customer_id,
            item,
            quantity,
            unit_price,
        )

    def _move(self, status: OrderStatus) -> bool:
        if _RANK[status] <= _RANK[self.status]:
            return False
        self.status = status
        self.update_time = utcnow()
        return True

    # Each transition says whether it changed the order, so that a handler seeing an event for
    # the second time writes nothing.
    def _note_payment(self, payment_id: str) -> bool:
        if self.payment_id or not payment_id:
            return False
        self.payment_id = payment_id
        return True

    def mark_paid(self, payment_id: str) -> bool:
        noted = self._note_payment(payment_id)
        return self._move(OrderStatus.PAID) or noted

    def mark_declined(self, payment_id: str, reason: str) -> bool:
        noted = self._note_payment(payment_id)
        if self._move(OrderStatus.PAYMENT_DECLINED):
            self.decline_reason = reason
            return True
        return noted

    def mark_shipped(self) -> bool:
        return self._move(OrderStatus.SHIPPED)

    def cancel(self, reason: str) -> bool:
        """Cancel (after the payment was cancelled, or when there is none); OrderCancelled."""
        if not self._move(OrderStatus.CANCELLED):
            return False
        self.events.append(
            new_event(
                events_pb2.OrderCancelled,
                order_id=self.order_id,
                customer_id=self.customer_id,
                reason=reason,
            )
        )
        return True

    # An order has at most one grant and one reversal of the same size, but a reversal may be
    # announced twice (0 points when the cancel raced ahead of the grant, then the full
    # amount): keeping the larger figure is right in any order of arrival.
    def points_earned(self, points: int) -> bool:
        if points <= self.points_granted:
            return False
        self.points_granted = points
        self.update_time = utcnow()
        return True

    def points_clawed_back(self, points: int) -> bool:
        if points <= self.points_reversed:
            return False
        self.points_reversed = points
        self.update_time = utcnow()
        return True
