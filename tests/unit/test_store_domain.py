"""Dealer orders: facts arriving in any order and more than once, and the shipping rules."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest
from phoneseller.store.v1 import events_pb2

from services.kit.clock import utcnow
from services.store.domain import (
    DetailsPendingError,
    NotReceivedError,
    OrderCancelledError,
    StoreOrder,
    StoreOrderStatus,
)

Fact = Callable[[StoreOrder], StoreOrder]

ORDERED: Fact = lambda o: o.with_details("alice", "Galaxy S25", 2)  # noqa: E731
PAID: Fact = lambda o: o.paid()  # noqa: E731
CANCELLED: Fact = lambda o: o.payment_cancelled()  # noqa: E731


def apply(*facts: Fact) -> StoreOrder:
    order = StoreOrder.unseen("o-1", "alice")
    for fact in facts:
        order = fact(order)
    return order


def received() -> StoreOrder:
    return apply(ORDERED, PAID)


def test_an_order_without_its_payment_is_not_a_dealer_order() -> None:
    order = apply(ORDERED)

    assert order.status is StoreOrderStatus.PENDING
    assert not order.is_listed
    assert order.receive_time is None
    with pytest.raises(NotReceivedError):
        order.shipped()


@pytest.mark.parametrize("facts", list(itertools.permutations([ORDERED, PAID])))
def test_ordered_and_paid_in_either_order_make_a_received_order(facts: tuple[Fact, ...]) -> None:
    order = apply(*facts)

    assert order.status is StoreOrderStatus.RECEIVED
    assert order.is_listed
    assert (order.customer_id, order.item, order.quantity) == ("alice", "Galaxy S25", 2)
    assert order.receive_time is not None


@pytest.mark.parametrize("fact", [ORDERED, PAID, CANCELLED])
def test_a_fact_seen_twice_changes_nothing_the_second_time(fact: Fact) -> None:
    once = apply(ORDERED, PAID, fact)
    assert fact(once) is once


def test_a_paid_order_is_listed_before_its_details_arrive_but_cannot_ship_yet() -> None:
    order = apply(PAID)

    assert order.status is StoreOrderStatus.RECEIVED
    assert order.is_listed
    assert not order.has_details
    with pytest.raises(DetailsPendingError):
        order.shipped()
    assert not order.due_for_auto_ship(utcnow() + timedelta(days=1), timedelta(seconds=1))


def test_shipping_a_received_order_publishes_shipped() -> None:
    order = received()

    shipped = order.shipped()

    assert shipped.status is StoreOrderStatus.SHIPPED
    assert shipped.ship_time is not None
    [event] = shipped.events
    assert isinstance(event, events_pb2.Shipped)
    assert (event.order_id, event.customer_id, event.item, event.quantity) == (
        "o-1",
        "alice",
        "Galaxy S25",
        2,
    )
    assert order.status is StoreOrderStatus.RECEIVED  # not changed in place


def test_shipping_twice_returns_the_order_unchanged_without_a_second_event() -> None:
    shipped = received().shipped()
    stored = StoreOrder(**{**vars(shipped), "events": []})

    again = stored.shipped()

    assert again is stored
    assert again.events == []


@pytest.mark.parametrize(
    "facts",
    [
        (ORDERED, PAID, CANCELLED),
        (CANCELLED, ORDERED, PAID),  # the cancellation overtook everything
        (PAID, CANCELLED, ORDERED),
    ],
)
def test_a_cancelled_payment_cancels_the_order_for_good(facts: tuple[Fact, ...]) -> None:
    order = apply(*facts)

    assert order.status is StoreOrderStatus.CANCELLED
    assert order.is_listed  # a cancellation implies the payment
    with pytest.raises(OrderCancelledError):
        order.shipped()
    assert not order.due_for_auto_ship(utcnow() + timedelta(days=1), timedelta(seconds=1))


def test_a_cancelled_payment_after_shipping_leaves_the_order_shipped() -> None:
    shipped = received().shipped()

    assert shipped.payment_cancelled() is shipped


def test_auto_ship_takes_received_orders_once_the_delay_has_passed() -> None:
    order = received()
    assert order.receive_time is not None
    delay = timedelta(seconds=30)

    assert not order.due_for_auto_ship(order.receive_time + timedelta(seconds=29), delay)
    assert order.due_for_auto_ship(order.receive_time + delay, delay)
    assert not order.shipped().due_for_auto_ship(order.receive_time + delay, delay)
