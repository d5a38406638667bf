"""Orders: statuses only move forward, whatever order the saga's events arrive in."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from phoneseller.order.v1 import events_pb2

from services.order.domain import Order, OrderStatus

Step = Callable[[Order], bool]

PAID: Step = lambda o: o.mark_paid("pay-1")  # noqa: E731
DECLINED: Step = lambda o: o.mark_declined("pay-1", "too much")  # noqa: E731
SHIPPED: Step = lambda o: o.mark_shipped()  # noqa: E731
CANCELLED: Step = lambda o: o.cancel("changed my mind")  # noqa: E731
POINTS: Step = lambda o: o.points_earned(100)  # noqa: E731
POINTS_BACK: Step = lambda o: o.points_clawed_back(100)  # noqa: E731


def placed() -> Order:
    return Order.place("alice", "Galaxy S25", 3, 400_000, "r-1")


def test_placing_computes_the_amount_and_announces_the_order() -> None:
    order = placed()
    assert (order.status, order.amount, order.payback_points) == (OrderStatus.ORDERED, 1_200_000, 0)
    (ordered,) = order.events
    assert isinstance(ordered, events_pb2.Ordered)
    assert (ordered.order_id, ordered.amount, ordered.quantity) == (order.order_id, 1_200_000, 3)


def test_the_same_request_is_recognised_by_its_terms() -> None:
    order = placed()
    assert order.same_request("alice", "Galaxy S25", 3, 400_000)
    assert not order.same_request("alice", "Galaxy S25", 4, 400_000)


@pytest.mark.parametrize("steps", list(itertools.permutations([PAID, SHIPPED, CANCELLED])))
def test_any_order_of_events_ends_cancelled_once(steps: tuple[Step, ...]) -> None:
    order = placed()
    for step in steps:
        step(order)
    assert order.status is OrderStatus.CANCELLED
    assert [type(e).__name__ for e in order.events] == ["Ordered", "OrderCancelled"]
    assert order.payment_id == "pay-1" or PAID not in steps


def test_a_transition_seen_again_changes_nothing() -> None:
    order = placed()
    assert PAID(order)
    assert not PAID(order), "the same payment twice"
    assert not DECLINED(order), "a paid order is not declined afterwards"
    assert SHIPPED(order) and not SHIPPED(order)
    assert not PAID(order), "status never moves back"
    assert order.status is OrderStatus.SHIPPED


def test_points_keep_the_larger_figure_and_vanish_on_cancel() -> None:
    order = placed()
    PAID(order)
    assert POINTS(order) and not POINTS(order)
    assert order.payback_points == 100
    assert POINTS_BACK(order) and not POINTS_BACK(order)
    assert order.payback_points == 0
    order.points_clawed_back(0)  # a reversal announced early with 0 points changes nothing
    assert order.points_reversed == 100
    CANCELLED(order)
    assert order.payback_points == 0
