"""Dealer orders and the rules for shipping them. No I/O here.

The store learns about an order from three events that may come out of order and more than
once: Ordered (what to ship), PayCompleted (the dealer order exists) and PayCancelled (do not
ship). It keeps one record per order with the facts seen so far; the record becomes a dealer
order, listed and shippable, once the payment is known.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from google.protobuf.message import Message
from phoneseller.store.v1 import events_pb2

from services.kit.clock import utcnow
from services.kit.events import new_event


class StoreOrderStatus(enum.StrEnum):
    #: Only the order was seen, not its payment: not a dealer order yet, not listed.
    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


class ShipRefusedError(Exception):
    """The order cannot be shipped now; the subclass says why."""

    def __init__(self, order_id: str) -> None:
        super().__init__(order_id)
        self.order_id = order_id


class NotReceivedError(ShipRefusedError):
    """No dealer order exists: the order is unknown or its payment was not seen yet."""


class OrderCancelledError(ShipRefusedError):
    """The payment was cancelled before shipping; the order will never ship."""


class DetailsPendingError(ShipRefusedError):
    """Paid, but what to ship (the Ordered event) has not arrived yet; it will shortly."""


@dataclass
class StoreOrder:
    order_id: str
    customer_id: str
    #: Empty while the Ordered event has not been seen.
    item: str
    quantity: int
    status: StoreOrderStatus
    #: When the store learned the order was paid; None while PENDING.
    receive_time: datetime | None
    ship_time: datetime | None
    update_time: datetime
    events: list[Message] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def unseen(cls, order_id: str, customer_id: str) -> StoreOrder:
        """The record of an order before any fact about it was applied."""
        return cls(
            order_id=order_id,
            customer_id=customer_id,
            item="",
            quantity=0,
            status=StoreOrderStatus.PENDING,
            receive_time=None,
            ship_time=None,
            update_time=utcnow(),
        )

    @property
    def is_listed(self) -> bool:
        """A dealer order exists once the payment is known."""
        return self.status is not StoreOrderStatus.PENDING

    @property
    def has_details(self) -> bool:
        return bool(self.item) and self.quantity > 0

    def with_details(self, customer_id: str, item: str, quantity: int) -> StoreOrder:
        """Apply Ordered: what to ship. Seen already: unchanged."""
        if self.has_details:
            return self
        return replace(
            self,
            customer_id=self.customer_id or customer_id,
            item=item,
            quantity=quantity,
            update_time=utcnow(),
            events=[],
        )

    def paid(self) -> StoreOrder:
        """Apply PayCompleted: a PENDING order becomes a RECEIVED dealer order."""
        if self.status is not StoreOrderStatus.PENDING:
            return self  # the payment seen again, or its cancellation came first
        now = utcnow()
        return replace(
            self, status=StoreOrderStatus.RECEIVED, receive_time=now, update_time=now, events=[]
        )

    def payment_cancelled(self) -> StoreOrder:
        """Apply PayCancelled: CANCELLED, unless shipped already (then unchanged).

        A cancellation implies the payment, so an order whose PayCompleted has not been seen
        yet becomes a (cancelled) dealer order too.
        """
        if self.status in (StoreOrderStatus.SHIPPED, StoreOrderStatus.CANCELLED):
            return self
        now = utcnow()
        return replace(
            self,
            status=StoreOrderStatus.CANCELLED,
            receive_time=self.receive_time or now,
            update_time=now,
            events=[],
        )

    def shipped(self) -> StoreOrder:
        """Ship a RECEIVED order (Shipped); shipped already: unchanged.

        Raises a `ShipRefusedError` when the order is not received, cancelled, or its details
        have not arrived yet.
        """
        if self.status is StoreOrderStatus.PENDING:
            raise NotReceivedError(self.order_id)
        if self.status is StoreOrderStatus.SHIPPED:
            return self
        if self.status is StoreOrderStatus.CANCELLED:
            raise OrderCancelledError(self.order_id)
        if not self.has_details:
            raise DetailsPendingError(self.order_id)
        now = utcnow()
        result = replace(
            self, status=StoreOrderStatus.SHIPPED, ship_time=now, update_time=now, events=[]
        )
        result.events.append(
            new_event(
                events_pb2.Shipped,
                order_id=self.order_id,
                customer_id=self.customer_id,
                item=self.item,
                quantity=self.quantity,
            )
        )
        return result

    def due_for_auto_ship(self, now: datetime, delay: timedelta) -> bool:
        """Whether the auto-ship job should ship this order now."""
        return (
            self.status is StoreOrderStatus.RECEIVED
            and self.has_details
            and self.receive_time is not None
            and self.receive_time <= now - delay
        )
