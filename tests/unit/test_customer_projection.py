"""The customer view is a pure function of the set of facts: order and copies do not matter."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.store.v1 import events_pb2 as store_events

from services.customer.domain import (
    EventType,
    Fact,
    InvalidEventError,
    OrderStatus,
    PaymentStatus,
    StoreStatus,
    describe,
    fact_from_event,
    history,
    project,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
ORDER = "order-1"
CUSTOMER = "cust-1"


def fact(event_type: EventType, seconds: float, **fields: object) -> Fact:
    values: dict[str, object] = {
        "event_id": f"{ORDER}-{event_type.value}",
        "event_type": event_type,
        "occurred_at": T0 + timedelta(seconds=seconds),
        "order_id": ORDER,
        "customer_id": CUSTOMER,
        **fields,
    }
    return Fact(**values)  # type: ignore[arg-type]


ORDERED = fact(
    EventType.ORDERED, 0, item="Galaxy S24", quantity=2, unit_price=600_000, amount=1_200_000
)
PAY_COMPLETED = fact(EventType.PAY_COMPLETED, 1, payment_id="pay-1", amount=1_200_000)
PAY_DECLINED = fact(
    EventType.PAY_DECLINED, 1, payment_id="pay-1", amount=1_200_000, reason="over the limit"
)
PROMO_COMPLETED = fact(EventType.PROMO_COMPLETED, 2, points=120_000)
SHIPPED = fact(EventType.SHIPPED, 3, item="Galaxy S24", quantity=2)
PROMO_CANCELLED = fact(EventType.PROMO_CANCELLED, 4, points=120_000)
PAY_CANCELLED = fact(EventType.PAY_CANCELLED, 5, payment_id="pay-1", amount=1_200_000)
ORDER_CANCELLED = fact(EventType.ORDER_CANCELLED, 6, reason="changed my mind")

HAPPY = [ORDERED, PAY_COMPLETED, PROMO_COMPLETED, SHIPPED]
CANCELLED = [
    ORDERED,
    PAY_COMPLETED,
    PROMO_COMPLETED,
    PROMO_CANCELLED,
    PAY_CANCELLED,
    ORDER_CANCELLED,
]
DECLINED = [ORDERED, PAY_DECLINED]


@pytest.mark.parametrize("facts", [HAPPY, CANCELLED, DECLINED], ids=["happy", "cancel", "decline"])
def test_every_order_of_the_events_gives_the_same_view(facts: list[Fact]) -> None:
    expected = project(facts)
    views = {project(permutation) for permutation in itertools.permutations(facts)}
    assert views == {expected}


def test_any_order_with_any_copies_of_all_eight_events_gives_the_same_view() -> None:
    everything = [
        ORDERED,
        PAY_COMPLETED,
        PAY_DECLINED,
        PROMO_COMPLETED,
        SHIPPED,
        PROMO_CANCELLED,
        PAY_CANCELLED,
        ORDER_CANCELLED,
    ]
    expected = project(everything)
    rng = random.Random(20250301)
    for _ in range(3000):
        copies = everything + rng.choices(everything, k=rng.randint(0, 8))
        rng.shuffle(copies)
        assert project(copies) == expected
    assert expected.event_count == 8
    assert len(expected.timeline) == 8


def test_the_happy_path_view() -> None:
    view = project(HAPPY)
    assert view.status is OrderStatus.SHIPPED
    assert view.payment_status is PaymentStatus.PAID
    assert view.store_status is StoreStatus.SHIPPED
    assert (view.item, view.quantity, view.unit_price, view.amount) == (
        "Galaxy S24",
        2,
        600_000,
        1_200_000,
    )
    assert view.payment_id == "pay-1"
    assert (view.points_granted, view.points_reversed) == (120_000, 0)
    assert view.create_time == ORDERED.occurred_at
    assert view.update_time == SHIPPED.occurred_at
    assert [e.description for e in view.timeline] == [
        "ordered 2 × Galaxy S24 for 1,200,000 won",
        "paid 1,200,000 won",
        "120,000 points granted",
        "shipped 2 × Galaxy S24",
    ]


def test_the_cancel_path_view() -> None:
    view = project(CANCELLED)
    assert view.status is OrderStatus.CANCELLED
    assert view.payment_status is PaymentStatus.CANCELLED
    assert view.store_status is StoreStatus.CANCELLED
    assert (view.points_granted, view.points_reversed) == (120_000, 120_000)
    assert [e.event_type for e in view.timeline] == [f.event_type for f in CANCELLED]


def test_the_decline_path_view() -> None:
    view = project(DECLINED)
    assert view.status is OrderStatus.PAYMENT_DECLINED
    assert view.payment_status is PaymentStatus.DECLINED
    assert view.store_status is None
    assert view.timeline[-1].description == "payment of 1,200,000 won declined: over the limit"


@pytest.mark.parametrize(
    ("facts", "status", "payment", "store"),
    [
        ([ORDERED], OrderStatus.ORDERED, None, None),
        ([PAY_COMPLETED], OrderStatus.PAID, PaymentStatus.PAID, StoreStatus.RECEIVED),
        ([SHIPPED], OrderStatus.SHIPPED, None, StoreStatus.SHIPPED),
        (
            [ORDERED, SHIPPED, PAY_COMPLETED],
            OrderStatus.SHIPPED,
            PaymentStatus.PAID,
            StoreStatus.SHIPPED,
        ),
        ([ORDER_CANCELLED], OrderStatus.CANCELLED, None, StoreStatus.CANCELLED),
        (
            [PAY_CANCELLED, PAY_COMPLETED],
            OrderStatus.CANCELLED,
            PaymentStatus.CANCELLED,
            StoreStatus.CANCELLED,
        ),
        (
            [SHIPPED, PAY_CANCELLED],
            OrderStatus.CANCELLED,
            PaymentStatus.CANCELLED,
            StoreStatus.SHIPPED,
        ),
        (
            [PAY_DECLINED, PAY_COMPLETED],
            OrderStatus.PAYMENT_DECLINED,
            PaymentStatus.DECLINED,
            StoreStatus.RECEIVED,
        ),
        ([PROMO_COMPLETED], OrderStatus.ORDERED, None, None),
    ],
)
def test_status_is_derived_from_the_facts_seen_not_from_the_last_event(
    facts: list[Fact],
    status: OrderStatus,
    payment: PaymentStatus | None,
    store: StoreStatus | None,
) -> None:
    for permutation in itertools.permutations(facts):
        view = project(permutation)
        assert (view.status, view.payment_status, view.store_status) == (status, payment, store)


def test_an_order_seen_before_its_ordered_event_shows_what_the_other_events_tell() -> None:
    view = project([SHIPPED, PAY_COMPLETED])
    assert (view.item, view.quantity, view.amount, view.unit_price) == (
        "Galaxy S24",
        2,
        1_200_000,
        0,
    )
    assert view.create_time == PAY_COMPLETED.occurred_at
    later = project([SHIPPED, PAY_COMPLETED, ORDERED])
    assert later.create_time == ORDERED.occurred_at
    assert later.unit_price == 600_000


def test_copies_of_an_event_count_once() -> None:
    view = project([*HAPPY, PROMO_COMPLETED, PROMO_COMPLETED, PAY_COMPLETED])
    assert view == project(HAPPY)
    assert view.points_granted == 120_000
    assert view.event_count == 4


def test_distinct_events_of_one_type_all_count() -> None:
    second_grant = replace(PROMO_COMPLETED, event_id="another-grant", points=5)
    view = project([*HAPPY, second_grant])
    assert view.points_granted == 120_005
    assert view.event_count == 5


def test_timeline_is_by_time_then_saga_order_then_event_id() -> None:
    same_time = T0 + timedelta(seconds=10)
    facts = [
        replace(f, occurred_at=same_time)
        for f in (
            ORDER_CANCELLED,
            PAY_CANCELLED,
            PROMO_CANCELLED,
            SHIPPED,
            PROMO_COMPLETED,
            PAY_DECLINED,
            PAY_COMPLETED,
            ORDERED,
        )
    ]
    early = replace(ORDER_CANCELLED, event_id="early", occurred_at=T0)
    twin = replace(ORDER_CANCELLED, event_id="a-twin", occurred_at=same_time)
    entries = project([*facts, early, twin]).timeline
    assert [(e.event_type, e.event_id) for e in entries] == [
        (EventType.ORDER_CANCELLED, "early"),
        (EventType.ORDERED, ORDERED.event_id),
        (EventType.PAY_COMPLETED, PAY_COMPLETED.event_id),
        (EventType.PAY_DECLINED, PAY_DECLINED.event_id),
        (EventType.PROMO_COMPLETED, PROMO_COMPLETED.event_id),
        (EventType.SHIPPED, SHIPPED.event_id),
        (EventType.PROMO_CANCELLED, PROMO_CANCELLED.event_id),
        (EventType.PAY_CANCELLED, PAY_CANCELLED.event_id),
        (EventType.ORDER_CANCELLED, "a-twin"),
        (EventType.ORDER_CANCELLED, ORDER_CANCELLED.event_id),
    ]


def test_descriptions_read_well() -> None:
    assert describe(PAY_COMPLETED) == "paid 1,200,000 won"
    assert describe(replace(PROMO_COMPLETED, points=120)) == "120 points granted"
    assert describe(PROMO_CANCELLED) == "120,000 points clawed back"
    assert describe(replace(PROMO_CANCELLED, points=0)) == (
        "points cancelled before they were granted"
    )
    assert describe(PAY_CANCELLED) == "payment cancelled, 1,200,000 won refunded"
    assert describe(ORDER_CANCELLED) == "order cancelled: changed my mind"
    assert describe(replace(ORDER_CANCELLED, reason="")) == "order cancelled"


def test_point_balance_is_granted_minus_reversed_over_all_orders() -> None:
    def order(order_id: str, start: int, facts: list[Fact]) -> list[Fact]:
        return [
            replace(
                f,
                order_id=order_id,
                event_id=f"{order_id}-{f.event_id}",
                occurred_at=f.occurred_at + timedelta(hours=start),
            )
            for f in facts
        ]

    kept = project(order("o-kept", 0, HAPPY))
    cancelled = project(order("o-cancelled", 1, CANCELLED))
    declined = project(order("o-declined", 2, DECLINED))
    result = history(CUSTOMER, [kept, declined, cancelled])
    assert result.point_balance == 120_000
    assert [v.order_id for v in result.orders] == ["o-declined", "o-cancelled", "o-kept"]
    assert history(CUSTOMER, []).point_balance == 0


def test_project_refuses_nothing_and_mixed_orders() -> None:
    with pytest.raises(ValueError, match="at least one"):
        project([])
    with pytest.raises(ValueError, match="several orders"):
        project([ORDERED, replace(PAY_COMPLETED, order_id="other")])


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


def test_facts_from_every_consumed_event() -> None:
    common: dict[str, Any] = {
        "occurred_at": timestamp(T0),
        "order_id": ORDER,
        "customer_id": CUSTOMER,
    }
    events = [
        order_events.Ordered(
            event_id="e1", item="iPhone", quantity=1, unit_price=9, amount=9, **common
        ),
        order_events.OrderCancelled(event_id="e2", reason="r", **common),
        payment_events.PayCompleted(event_id="e3", payment_id="p", amount=9, **common),
        payment_events.PayDeclined(event_id="e4", payment_id="p", amount=9, reason="no", **common),
        payment_events.PayCancelled(event_id="e5", payment_id="p", amount=9, **common),
        promotion_events.PromoCompleted(event_id="e6", points=3, **common),
        promotion_events.PromoCancelled(event_id="e7", points_reversed=2, **common),
        store_events.Shipped(event_id="e8", item="iPhone", quantity=1, **common),
    ]
    facts = [fact_from_event(e) for e in events]
    assert [f.event_type.value for f in facts] == [e.DESCRIPTOR.name for e in events]
    assert all(f.occurred_at == T0 and f.order_id == ORDER for f in facts)
    assert (facts[0].item, facts[0].amount) == ("iPhone", 9)
    assert (facts[3].reason, facts[3].payment_id) == ("no", "p")
    assert (facts[5].points, facts[6].points) == (3, 2)


def test_events_the_view_cannot_place_are_refused() -> None:
    with pytest.raises(InvalidEventError):
        fact_from_event(order_events.Ordered(event_id="e", order_id=ORDER))  # no occurred_at
    with pytest.raises(InvalidEventError):
        fact_from_event(order_events.Ordered(event_id="e", occurred_at=timestamp(T0)))
    with pytest.raises(InvalidEventError):
        fact_from_event(Timestamp())
