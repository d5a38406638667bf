"""The customer view as a pure function of the facts (events) seen about each order. No I/O.

Events may arrive twice and in any order (a `PayCompleted` before its `Ordered`, a `Shipped`
before the `PayCompleted`), so nothing here depends on which event came last: `project` takes
the *set* of facts about one order, drops repeated event ids, and derives every field from
which kinds of fact are present. Any order and any repetition of the same events gives the
same `OrderView`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.store.v1 import events_pb2 as store_events

from services.kit.events import EventTypes, utc_datetime

#: Every event the view consumes.
EVENT_TYPES = EventTypes(
    [
        order_events.Ordered,
        order_events.OrderCancelled,
        payment_events.PayCompleted,
        payment_events.PayDeclined,
        payment_events.PayCancelled,
        promotion_events.PromoCompleted,
        promotion_events.PromoCancelled,
        store_events.Shipped,
    ]
)


class EventType(enum.StrEnum):
    """The events the view knows, declared in the saga's own order.

    The declaration order breaks ties in the timeline between events with the same
    `occurred_at` (clocks of different services are coarse and may agree to the microsecond).
    """

    ORDERED = "Ordered"
    PAY_COMPLETED = "PayCompleted"
    PAY_DECLINED = "PayDeclined"
    PROMO_COMPLETED = "PromoCompleted"
    SHIPPED = "Shipped"
    PROMO_CANCELLED = "PromoCancelled"
    PAY_CANCELLED = "PayCancelled"
    ORDER_CANCELLED = "OrderCancelled"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {event_type: rank for rank, event_type in enumerate(EventType)}


class OrderStatus(enum.StrEnum):
    ORDERED = "ORDERED"
    PAID = "PAID"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


class PaymentStatus(enum.StrEnum):
    PAID = "PAID"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"


class StoreStatus(enum.StrEnum):
    RECEIVED = "RECEIVED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


class InvalidEventError(ValueError):
    """An event the view cannot place: no event id, order id or time."""


@dataclass(frozen=True)
class Fact:
    """One event as the view keeps it: the envelope fields plus what the view needs of it.

    Fields an event type does not carry stay at their zero value; `points` is the granted
    points of a `PromoCompleted` and the clawed-back points of a `PromoCancelled`.
    """

    event_id: str
    event_type: EventType
    occurred_at: datetime
    order_id: str
    customer_id: str
    item: str = ""
    quantity: int = 0
    unit_price: int = 0
    amount: int = 0
    payment_id: str = ""
    points: int = 0
    reason: str = ""

    def timeline_key(self) -> tuple[datetime, int, str]:
        return (self.occurred_at, self.event_type.rank, self.event_id)


@dataclass(frozen=True)
class TimelineEntry:
    event_type: EventType
    event_id: str
    occurred_at: datetime
    description: str


@dataclass(frozen=True)
class OrderView:
    """One order as the view has seen it."""

    order_id: str
    customer_id: str
    item: str
    quantity: int
    unit_price: int
    amount: int
    status: OrderStatus
    payment_status: PaymentStatus | None
    store_status: StoreStatus | None
    payment_id: str
    points_granted: int
    points_reversed: int
    #: When the order was placed (`Ordered`); until that is seen, the earliest event's time.
    create_time: datetime
    #: The time of the latest event seen, so that a replay reproduces the view exactly.
    update_time: datetime
    #: How many distinct events the view holds about this order.
    event_count: int
    timeline: tuple[TimelineEntry, ...] = ()


@dataclass(frozen=True)
class CustomerHistory:
    customer_id: str
    #: Newest first.
    orders: tuple[OrderView, ...]

    @property
    def point_balance(self) -> int:
        return sum(order.points_granted - order.points_reversed for order in self.orders)


def fact_from_event(event: Message) -> Fact:
    """The fact an event states; raises InvalidEventError for events the view cannot place."""
    name = event.DESCRIPTOR.full_name
    if name not in EVENT_TYPES:
        raise InvalidEventError(f"the customer view does not consume {name}")
    # Every event starts with event_id, occurred_at, order_id and customer_id.
    common: Any = event
    if not common.event_id or not common.order_id or not event.HasField("occurred_at"):
        raise InvalidEventError(f"{name} needs event_id, order_id and occurred_at")
    details: dict[str, Any]
    match event:
        case order_events.Ordered():
            details = {
                "item": event.item,
                "quantity": event.quantity,
                "unit_price": event.unit_price,
                "amount": event.amount,
            }
        case order_events.OrderCancelled():
            details = {"reason": event.reason}
        case payment_events.PayCompleted() | payment_events.PayCancelled():
            details = {"payment_id": event.payment_id, "amount": event.amount}
        case payment_events.PayDeclined():
            details = {
                "payment_id": event.payment_id,
                "amount": event.amount,
                "reason": event.reason,
            }
        case promotion_events.PromoCompleted():
            details = {"points": event.points}
        case promotion_events.PromoCancelled():
            details = {"points": event.points_reversed}
        case store_events.Shipped():
            details = {"item": event.item, "quantity": event.quantity}
        case _:  # pragma: no cover - EVENT_TYPES lists exactly the cases above
            raise InvalidEventError(f"the customer view does not consume {name}")
    return Fact(
        event_id=common.event_id,
        event_type=EventType(event.DESCRIPTOR.name),
        occurred_at=utc_datetime(common.occurred_at),
        order_id=common.order_id,
        customer_id=common.customer_id,
        **details,
    )


def distinct(facts: Iterable[Fact]) -> list[Fact]:
    """One fact per event id, in timeline order.

    Copies of one event are identical; should two differ anyway, the same one is kept
    whatever the order they came in.
    """
    by_id: dict[str, Fact] = {}
    for fact in facts:
        kept = by_id.get(fact.event_id)
        if kept is None or _total_key(fact) < _total_key(kept):
            by_id[fact.event_id] = fact
    return sorted(by_id.values(), key=Fact.timeline_key)


def _total_key(fact: Fact) -> tuple[object, ...]:
    return (*fact.timeline_key(), *dataclasses.astuple(fact))


def describe(fact: Fact) -> str:
    """What happened, in words for the customer."""
    reason = f": {fact.reason}" if fact.reason else ""
    match fact.event_type:
        case EventType.ORDERED:
            return f"ordered {fact.quantity} × {fact.item} for {fact.amount:,} won"
        case EventType.PAY_COMPLETED:
            return f"paid {fact.amount:,} won"
        case EventType.PAY_DECLINED:
            return f"payment of {fact.amount:,} won declined{reason}"
        case EventType.PAY_CANCELLED:
            return f"payment cancelled, {fact.amount:,} won refunded"
        case EventType.PROMO_COMPLETED:
            return f"{fact.points:,} points granted"
        case EventType.PROMO_CANCELLED:
            if fact.points:
                return f"{fact.points:,} points clawed back"
            return "points cancelled before they were granted"
        case EventType.SHIPPED:
            return f"shipped {fact.quantity} × {fact.item}"
        case EventType.ORDER_CANCELLED:
            return f"order cancelled{reason}"


def timeline(facts: Iterable[Fact]) -> tuple[TimelineEntry, ...]:
    """One entry per distinct fact: by occurred_at, then saga order, then event id."""
    return tuple(
        TimelineEntry(f.event_type, f.event_id, f.occurred_at, describe(f)) for f in distinct(facts)
    )


def order_status(seen: set[EventType]) -> OrderStatus:
    if EventType.PAY_CANCELLED in seen or EventType.ORDER_CANCELLED in seen:
        return OrderStatus.CANCELLED
    if EventType.SHIPPED in seen:
        return OrderStatus.SHIPPED
    if EventType.PAY_DECLINED in seen:
        return OrderStatus.PAYMENT_DECLINED
    if EventType.PAY_COMPLETED in seen:
        return OrderStatus.PAID
    return OrderStatus.ORDERED


def payment_status(seen: set[EventType]) -> PaymentStatus | None:
    if EventType.PAY_CANCELLED in seen:
        return PaymentStatus.CANCELLED
    if EventType.PAY_DECLINED in seen:
        return PaymentStatus.DECLINED
    if EventType.PAY_COMPLETED in seen:
        return PaymentStatus.PAID
    return None


def store_status(seen: set[EventType]) -> StoreStatus | None:
    if EventType.SHIPPED in seen:
        return StoreStatus.SHIPPED
    if EventType.PAY_CANCELLED in seen or EventType.ORDER_CANCELLED in seen:
        return StoreStatus.CANCELLED
    if EventType.PAY_COMPLETED in seen:
        return StoreStatus.RECEIVED
    return None


def project(facts: Iterable[Fact]) -> OrderView:
    """The view of one order from every fact seen about it, whatever their order or copies."""
    facts_in_order = distinct(facts)
    if not facts_in_order:
        raise ValueError("an order view needs at least one fact")
    order_ids = {f.order_id for f in facts_in_order}
    if len(order_ids) != 1:
        raise ValueError(f"facts of several orders given to one view: {sorted(order_ids)}")

    def first(*types: EventType) -> Fact | None:
        return next((f for f in facts_in_order if f.event_type in types), None)

    def total(event_type: EventType) -> int:
        return sum(f.points for f in facts_in_order if f.event_type is event_type)

    seen = {f.event_type for f in facts_in_order}
    ordered = first(EventType.ORDERED)
    payment = first(EventType.PAY_COMPLETED, EventType.PAY_DECLINED, EventType.PAY_CANCELLED)
    shipped = first(EventType.SHIPPED)
    # Until `Ordered` arrives, show what the other events already tell.
    described = ordered or shipped
    priced = ordered or payment
    return OrderView(
        order_id=facts_in_order[0].order_id,
        customer_id=(ordered or facts_in_order[0]).customer_id,
        item=described.item if described else "",
        quantity=described.quantity if described else 0,
        unit_price=ordered.unit_price if ordered else 0,
        amount=priced.amount if priced else 0,
        status=order_status(seen),
        payment_status=payment_status(seen),
        store_status=store_status(seen),
        payment_id=payment.payment_id if payment else "",
        points_granted=total(EventType.PROMO_COMPLETED),
        points_reversed=total(EventType.PROMO_CANCELLED),
        create_time=(ordered or facts_in_order[0]).occurred_at,
        update_time=max(f.occurred_at for f in facts_in_order),
        event_count=len(facts_in_order),
        timeline=timeline(facts_in_order),
    )


def history(customer_id: str, views: Sequence[OrderView]) -> CustomerHistory:
    """A customer's orders, newest first (by create_time, then order id)."""
    return CustomerHistory(
        customer_id,
        tuple(sorted(views, key=lambda v: (v.create_time, v.order_id), reverse=True)),
    )
