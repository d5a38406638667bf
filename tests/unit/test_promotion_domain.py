"""Point grants and the ledger: the rules, without a database."""

from __future__ import annotations

import pytest
from phoneseller.promotion.v1 import events_pb2

from services.kit.clock import utcnow
from services.promotion.domain import (
    EntryKind,
    GrantStatus,
    LedgerEntry,
    PointGrant,
    PointsRate,
    balance,
)

TEN = PointsRate(10)


@pytest.mark.parametrize(
    ("percent", "amount", "points"),
    [
        (10, 1_200_000, 120_000),
        (10, 12_345, 1_234),  # floor, never rounded up
        (10, 19, 1),
        (10, 9, 0),
        (7, 999, 69),
        (0, 1_000_000, 0),
        (100, 5, 5),
        (10, 0, 0),
        (10, -50, 0),  # a malformed amount never takes points away
        (10, 10_000_000_000, 1_000_000_000),
    ],
)
def test_points_are_the_rate_of_the_amount_rounded_down(
    percent: int, amount: int, points: int
) -> None:
    assert PointsRate(percent).points_for(amount) == points


@pytest.mark.parametrize("percent", [-1, 101])
def test_rate_outside_0_to_100_is_refused(percent: int) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        PointsRate(percent)


def test_payment_grants_points_with_a_grant_entry_and_promo_completed() -> None:
    grant = PointGrant.for_payment("o-1", "alice", 12_345, TEN)

    assert (grant.status, grant.points_granted, grant.points_reversed, grant.paid) == (
        GrantStatus.GRANTED,
        1_234,
        0,
        True,
    )
    [entry] = grant.new_entries
    assert (entry.kind, entry.points, entry.order_id, entry.customer_id) == (
        EntryKind.GRANT,
        1_234,
        "o-1",
        "alice",
    )
    [event] = grant.events
    assert isinstance(event, events_pb2.PromoCompleted)
    assert (event.order_id, event.customer_id, event.points) == ("o-1", "alice", 1_234)
    assert event.event_id


def test_the_same_payment_again_changes_nothing() -> None:
    grant = PointGrant.for_payment("o-1", "alice", 10_000, TEN)
    stored = PointGrant(**{**vars(grant), "new_entries": [], "events": []})

    again = stored.with_payment("alice", 10_000, TEN)

    assert again is stored
    assert again.new_entries == []
    assert again.events == []


def test_clawback_reverses_the_grant() -> None:
    stored = PointGrant.for_payment("o-1", "alice", 10_000, TEN)
    stored.new_entries.clear()
    stored.events.clear()

    reversed_ = stored.clawed_back()

    assert (reversed_.status, reversed_.points_granted, reversed_.points_reversed) == (
        GrantStatus.REVERSED,
        1_000,
        1_000,
    )
    [entry] = reversed_.new_entries
    assert (entry.kind, entry.points) == (EntryKind.REVERSAL, -1_000)
    [event] = reversed_.events
    assert isinstance(event, events_pb2.PromoCancelled)
    assert (event.order_id, event.customer_id, event.points_reversed) == ("o-1", "alice", 1_000)
    assert stored.status is GrantStatus.GRANTED  # the stored grant is not changed in place


def test_a_second_clawback_reverses_nothing_more() -> None:
    reversed_ = PointGrant.for_payment("o-1", "alice", 10_000, TEN).clawed_back()
    stored = PointGrant(**{**vars(reversed_), "new_entries": [], "events": []})

    assert stored.clawed_back() is stored


def test_clawback_before_the_payment_records_a_reversed_grant_of_zero() -> None:
    early = PointGrant.reversed_before_payment("o-1", "alice")

    assert (early.status, early.points_granted, early.points_reversed, early.paid) == (
        GrantStatus.REVERSED,
        0,
        0,
        False,
    )
    assert early.new_entries == []  # nothing granted, nothing to reverse
    [event] = early.events
    assert isinstance(event, events_pb2.PromoCancelled)
    assert event.points_reversed == 0
    assert early.clawed_back() is early


def test_payment_after_an_early_clawback_is_granted_and_reversed_at_once() -> None:
    early = PointGrant.reversed_before_payment("o-1", "alice")
    early.events.clear()

    late = early.with_payment("alice", 12_345, TEN)

    assert (late.status, late.points_granted, late.points_reversed, late.paid) == (
        GrantStatus.REVERSED,
        1_234,
        1_234,
        True,
    )
    assert [(e.kind, e.points) for e in late.new_entries] == [
        (EntryKind.GRANT, 1_234),
        (EntryKind.REVERSAL, -1_234),
    ]
    completed, cancelled = late.events
    assert isinstance(completed, events_pb2.PromoCompleted)
    assert isinstance(cancelled, events_pb2.PromoCancelled)
    assert (completed.points, cancelled.points_reversed) == (1_234, 1_234)
    assert balance(late.new_entries) == 0
    # ...and once paid, the same payment again changes nothing.
    assert late.with_payment("alice", 12_345, TEN) is late


def entry(points: int) -> LedgerEntry:
    kind = EntryKind.GRANT if points >= 0 else EntryKind.REVERSAL
    return LedgerEntry.new("alice", "o", kind, points, utcnow())


def test_balance_is_the_sum_of_the_entries_and_never_negative() -> None:
    assert balance([]) == 0
    assert balance([entry(100), entry(50), entry(-100)]) == 50
    assert balance([entry(-5)]) == 0
