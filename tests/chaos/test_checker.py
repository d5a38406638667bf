"""The chaos checker on hand-made histories and end states: each invariant can fail.

A consistent end state is built from the history (`settled`), then one thing is broken the way
a real bug would break it; the test asserts that exactly the invariant that guards it (or, where
one fault necessarily shows in two places, at least that one) reports the order.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from chaos.checker import (
    ACKNOWLEDGED,
    BALANCES,
    EVENTS,
    PAYMENTS,
    POINTS,
    VIEW,
    WHOLE,
    Invariant,
    Verdict,
    check,
    points_for,
)
from chaos.history import Attempt, Kind, Operation, Outcome, load_history
from chaos.state import (
    ConsumerState,
    DeadLetter,
    EndState,
    Ledger,
    LedgerEntry,
    OrderState,
    PaymentState,
    View,
    ViewOrder,
)

ALICE, BOB = "alice", "bob"
_clock = itertools.count(1)


def place(
    order_id: str,
    customer: str = ALICE,
    amount: int = 1_000_000,
    status: str = "PAID",
    outcome: Outcome = Outcome.OK,
    attempts: Sequence[Attempt] = (),
) -> Operation:
    at = float(next(_clock))
    op = Operation(
        client=0,
        customer=customer,
        kind=Kind.PLACE,
        request_id=f"req-{order_id}",
        invoked=at,
        outcome=outcome,
        completed=at + 0.1,
        amount=amount,
        attempts=list(attempts),
    )
    if outcome is Outcome.OK:
        op.order_id = order_id
        op.answer = {"order_id": order_id, "status": status, "amount": amount}
    else:
        op.code, op.reason = attempts[-1].code if attempts else "DEADLINE_EXCEEDED", "-"
    return op


def cancel(
    order_id: str,
    customer: str = ALICE,
    outcome: Outcome = Outcome.OK,
    attempts: Sequence[Attempt] = (),
) -> Operation:
    at = float(next(_clock))
    op = Operation(
        client=0,
        customer=customer,
        kind=Kind.CANCEL,
        request_id=f"req-{order_id}-cancel",
        invoked=at,
        outcome=outcome,
        completed=at + 0.1,
        order_id=order_id,
        attempts=list(attempts),
    )
    if outcome is Outcome.OK:
        op.answer = {"order_id": order_id, "status": "CANCELLED"}
    else:
        op.code, op.reason = attempts[-1].code, attempts[-1].reason
    return op


def read(customer: str, balance: int) -> Operation:
    at = float(next(_clock))
    return Operation(
        client=0,
        customer=customer,
        kind=Kind.BALANCE,
        request_id="read",
        invoked=at,
        outcome=Outcome.OK,
        completed=at + 0.1,
        answer={"balance": balance},
    )


UNAVAILABLE = Attempt(at=1.0, code="UNAVAILABLE", reason="PROMOTION_UNAVAILABLE", retry_delay=1.0)
REFUSED = Attempt(at=1.0, code="FAILED_PRECONDITION", reason="ORDER_ALREADY_SHIPPED")


def settled(ends: Iterable[tuple[Operation, str]]) -> EndState:
    """The state a correct system settles in: each PlaceOrder's order at the given end status,
    whole in every service."""
    state = EndState(
        outbox=dict.fromkeys(("order", "payment", "promotion", "store", "customer"), 0),
        consumers={c: ConsumerState(0, 0) for c in ("order", "promotion", "store", "customer")},
    )
    entries: dict[str, list[LedgerEntry]] = {}
    views: dict[str, dict[str, ViewOrder]] = {}
    for op, status in ends:
        order_id = op.order_id or f"made-by-{op.request_id}"
        points = points_for(op.amount) if status in ("PAID", "CANCELLED") else 0
        state.orders[order_id] = OrderState(
            order_id=order_id,
            customer_id=op.customer,
            status=status,
            amount=op.amount,
            payback_points=points if status == "PAID" else 0,
            payment_id=f"pay-{order_id}",
            request_id=op.request_id,
        )
        payment_status = {"PAID": "PAID", "CANCELLED": "CANCELLED"}.get(status, "DECLINED")
        state.payments[order_id] = [
            PaymentState(f"pay-{order_id}", order_id, op.customer, op.amount, payment_status)
        ]
        mine = entries.setdefault(op.customer, [])
        if points:
            mine.append(LedgerEntry(order_id, "GRANT", points))
        if status == "CANCELLED":
            mine.append(LedgerEntry(order_id, "REVERSAL", -points))
        store = {"PAID": "RECEIVED", "CANCELLED": "CANCELLED"}.get(status, "")
        if store:
            state.store[order_id] = store
        views.setdefault(op.customer, {})[order_id] = ViewOrder(
            order_id=order_id,
            status=status,
            payment_status=payment_status,
            store_status=store,
            amount=op.amount,
            points_granted=points,
            points_reversed=points if status == "CANCELLED" else 0,
        )
    for customer, mine in entries.items():
        balance = sum(e.points for e in mine)
        state.ledgers[customer] = Ledger(customer, balance, tuple(mine))
        state.views[customer] = View(customer, balance, views.get(customer, {}))
    for customer, orders in views.items():
        if customer not in state.views:
            state.views[customer] = View(customer, 0, orders)
    return state


def show_in_view(state: EndState, customer: str, order_id: str, **changes: Any) -> None:
    """Change what the customer's view shows for one order (a view is immutable: a new one)."""
    view = state.views[customer]
    orders = dict(view.orders)
    orders[order_id] = dataclasses.replace(orders[order_id], **changes)
    state.views[customer] = dataclasses.replace(view, orders=orders)


def drop_from_view(state: EndState, customer: str, order_id: str) -> None:
    view = state.views[customer]
    orders = {k: v for k, v in view.orders.items() if k != order_id}
    state.views[customer] = dataclasses.replace(view, orders=orders)


def failing(verdict: Verdict) -> set[str]:
    return {r.invariant.key for r in verdict.results if r.violations}


def assert_only(verdict: Verdict, invariant: Invariant, subject: str) -> None:
    assert failing(verdict) == {invariant.key}, verdict.as_json()
    assert subject in {v.subject for v in verdict.result(invariant).violations}


# --- a correct run passes -------------------------------------------------------------------


def test_a_consistent_history_and_end_state_pass() -> None:
    kept, gone, declined = place("o1"), place("o2"), place("o3", amount=6_000_000)
    declined.answer = {"order_id": "o3", "status": "PAYMENT_DECLINED"}
    history = [kept, gone, cancel("o2"), declined, read(ALICE, 0), read(ALICE, 200_000)]
    state = settled([(kept, "PAID"), (gone, "CANCELLED"), (declined, "PAYMENT_DECLINED")])
    verdict = check(history, state)
    assert verdict.ok, verdict.as_json()
    assert {r.invariant.key: r.checked for r in verdict.results}[WHOLE.key] == 3


def test_unknown_outcomes_may_end_either_way_but_whole() -> None:
    # A PlaceOrder that timed out made its order after all (PAID), another made none; a
    # cancel answered "not now" was finished by payment, another was dropped.
    made = place("o1", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE, UNAVAILABLE])
    lost = place("o2", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE])
    finished, dropped = place("o3"), place("o4")
    history = [
        made,
        lost,
        finished,
        cancel("o3", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE]),
        dropped,
        cancel("o4", outcome=Outcome.FAILED, attempts=[UNAVAILABLE, REFUSED]),
    ]
    state = settled([(made, "PAID"), (finished, "CANCELLED"), (dropped, "PAID")])
    assert check(history, state).ok


def test_the_history_round_trips_through_json_lines(tmp_path) -> None:
    from chaos.history import HistoryWriter

    ops = [place("o1"), cancel("o1", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE])]
    writer = HistoryWriter(tmp_path / "history.jsonl")
    for op in ops:
        writer.record(op)
    writer.close()
    assert load_history(tmp_path / "history.jsonl") == ops


# --- one test per invariant -------------------------------------------------------------------


def test_an_acknowledged_order_that_is_lost() -> None:
    kept, other = place("o1"), place("o2")
    state = settled([(kept, "PAID"), (other, "PAID")])
    # The order service forgot o1 (and so, being consistent, did everyone else).
    state = settled([(other, "PAID")])
    verdict = check([kept, other], state)
    assert ACKNOWLEDGED.key in failing(verdict)
    (violation,) = verdict.result(ACKNOWLEDGED).violations
    assert violation.subject == "o1" and "lost" in violation.message


def test_an_acknowledged_cancel_that_did_not_stick() -> None:
    order = place("o1")
    # CancelOrder answered CANCELLED, yet the order is PAID again, whole everywhere.
    verdict = check([order, cancel("o1")], settled([(order, "PAID")]))
    assert_only(verdict, ACKNOWLEDGED, "o1")


def test_a_refused_cancel_that_took_effect() -> None:
    order = place("o1")
    refused = cancel("o1", outcome=Outcome.FAILED, attempts=[REFUSED])
    verdict = check([order, refused], settled([(order, "CANCELLED")]))
    assert_only(verdict, ACKNOWLEDGED, "o1")


def test_an_order_no_client_placed() -> None:
    order = place("o1")
    phantom = place("o9")
    state = settled([(order, "PAID"), (phantom, "PAID")])
    verdict = check([order], state)
    assert ACKNOWLEDGED.key in failing(verdict)
    assert "o9" in {v.subject for v in verdict.result(ACKNOWLEDGED).violations}


def test_an_unknown_cancel_left_half_done() -> None:
    order = place("o1")
    unknown = cancel("o1", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE])
    state = settled([(order, "CANCELLED")])
    # The order and everything else is cancelled, but the store still holds the dealer order.
    state.store["o1"] = "RECEIVED"
    show_in_view(state, ALICE, "o1", store_status="RECEIVED")
    assert_only(check([order, unknown], state), WHOLE, "o1")


def test_an_unknown_place_left_ordered() -> None:
    op = place("o1", outcome=Outcome.UNKNOWN, attempts=[UNAVAILABLE])
    state = settled([])
    state.orders["o1"] = OrderState("o1", ALICE, "ORDERED", op.amount, request_id=op.request_id)
    state.views[ALICE] = View(ALICE, 0, {"o1": ViewOrder("o1", "ORDERED", "", "", op.amount)})
    assert_only(check([op], state), WHOLE, "o1")


def test_a_paid_order_without_its_points_is_half_done() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.orders["o1"] = dataclasses.replace(state.orders["o1"], payback_points=0)
    assert_only(check([order], state), WHOLE, "o1")


def test_a_double_charge() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.payments["o1"].append(PaymentState("pay-again", "o1", ALICE, order.amount, "PAID"))
    verdict = check([order], state)
    assert PAYMENTS.key in failing(verdict)
    assert "charged 2 times" in verdict.result(PAYMENTS).violations[0].message


def test_a_cancelled_order_whose_payment_stayed_paid() -> None:
    order = place("o1")
    state = settled([(order, "CANCELLED")])
    state.payments["o1"] = [dataclasses.replace(state.payments["o1"][0], status="PAID")]
    show_in_view(state, ALICE, "o1", payment_status="PAID")
    assert_only(check([order, cancel("o1")], state), PAYMENTS, "o1")


def test_a_cancel_request_never_ended() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.pending_cancellations.append("pay-o1")
    assert_only(check([order], state), PAYMENTS, "pay-o1")


def test_a_duplicate_grant_and_reversal() -> None:
    order = place("o1")
    state = settled([(order, "CANCELLED")])
    points = points_for(order.amount)
    twice = (
        LedgerEntry("o1", "GRANT", points),
        LedgerEntry("o1", "GRANT", points),
        LedgerEntry("o1", "REVERSAL", -points),
        LedgerEntry("o1", "REVERSAL", -points),
    )
    state.ledgers[ALICE] = Ledger(ALICE, 0, twice)
    # The view counted both, as a consistent (and wrong) projection would.
    show_in_view(state, ALICE, "o1", points_granted=2 * points, points_reversed=2 * points)
    assert_only(check([order, cancel("o1")], state), POINTS, "o1")


def test_a_reversal_of_the_wrong_amount() -> None:
    order = place("o1")
    state = settled([(order, "CANCELLED")])
    points = points_for(order.amount)
    # Reversed 1 point too few; the balance says what the entries add up to.
    entries = (LedgerEntry("o1", "GRANT", points), LedgerEntry("o1", "REVERSAL", 1 - points))
    state.ledgers[ALICE] = Ledger(ALICE, 1, entries)
    verdict = check([order, cancel("o1")], state)
    assert POINTS.key in failing(verdict)
    assert BALANCES.key in failing(verdict)  # 1 point left over: the balance is wrong too


def test_a_balance_that_is_not_ten_percent_of_paid_orders() -> None:
    kept, gone = place("o1"), place("o2")
    state = settled([(kept, "PAID"), (gone, "CANCELLED")])
    ledger = state.ledgers[ALICE]
    state.ledgers[ALICE] = dataclasses.replace(ledger, balance=ledger.balance + 5)
    state.views[ALICE] = dataclasses.replace(state.views[ALICE], point_balance=ledger.balance + 5)
    assert_only(check([kept, gone, cancel("o2")], state), BALANCES, ALICE)


def test_a_ledger_that_goes_negative() -> None:
    order = place("o1")
    state = settled([(order, "CANCELLED")])
    entries = state.ledgers[ALICE].entries
    # The reversal listed before its grant: at that point the customer had negative points.
    state.ledgers[ALICE] = dataclasses.replace(state.ledgers[ALICE], entries=entries[::-1])
    verdict = check([order, cancel("o1")], state)
    assert_only(verdict, BALANCES, ALICE)
    assert "goes to -" in verdict.result(BALANCES).violations[0].message


def test_an_observed_balance_out_of_bounds() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    history = [read(ALICE, -1), order, read(ALICE, points_for(order.amount) + 1)]
    verdict = check(history, state)
    assert_only(verdict, BALANCES, ALICE)
    assert len(verdict.result(BALANCES).violations) == 2


def test_a_view_that_disagrees_with_the_services() -> None:
    order, other = place("o1"), place("o2", customer=BOB)
    state = settled([(order, "CANCELLED"), (other, "PAID")])
    show_in_view(state, ALICE, "o1", status="PAID", points_reversed=0)
    drop_from_view(state, BOB, "o2")
    verdict = check([order, cancel("o1"), other], state)
    assert failing(verdict) == {VIEW.key}
    assert {v.subject for v in verdict.result(VIEW).violations} == {"o1", "o2"}


def test_a_view_balance_that_disagrees_with_the_ledger() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.views[ALICE] = dataclasses.replace(state.views[ALICE], point_balance=0)
    assert_only(check([order], state), VIEW, ALICE)


def test_an_outbox_not_drained_and_a_consumer_behind() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.outbox["payment"] = 3
    state.consumers["store"] = ConsumerState(pending=0, ack_pending=2)
    verdict = check([order], state)
    assert failing(verdict) == {EVENTS.key}
    assert {v.subject for v in verdict.result(EVENTS).violations} == {"payment", "store"}


def test_dead_letters_must_be_explained_by_an_injected_poison() -> None:
    order = place("o1")
    state = settled([(order, "PAID")])
    state.dead_letters = [
        DeadLetter("store", "poison-1", "phoneseller.payment.v1.PayCompleted", "", "undecodable"),
        DeadLetter("order", "poison-1", "phoneseller.payment.v1.PayCompleted", "", "undecodable"),
        DeadLetter("store", "e-42", "phoneseller.payment.v1.PayCompleted", "o1", "boom"),
    ]
    poison = {"poison-1": frozenset({"order", "store", "customer"})}
    verdict = check([order], state, poison=poison)
    assert failing(verdict) == {EVENTS.key}
    messages = {v.subject: v.message for v in verdict.result(EVENTS).violations}
    assert set(messages) == {"e-42", "poison-1"}
    assert "not parked by customer" in messages["poison-1"]
    # Explained and parked everywhere it should be: nothing to report.
    state.dead_letters = state.dead_letters[:2]
    assert check([order], state, poison={"poison-1": frozenset({"order", "store"})}).ok


def test_one_request_that_made_two_orders() -> None:
    # A retried PlaceOrder that was not idempotent: the same request_id, a second order.
    order = place("o1")
    state = settled([(order, "PAID")])
    twin = dataclasses.replace(state.orders["o1"], order_id="o1-twin")
    state.orders["o1-twin"] = twin
    verdict = check([order], state)
    assert ACKNOWLEDGED.key in failing(verdict)
    assert order.request_id in {v.subject for v in verdict.result(ACKNOWLEDGED).violations}


def test_the_report_shows_every_invariant_and_draws_the_timeline(tmp_path) -> None:
    from chaos import report
    from chaos.faults import FaultKind, FaultRecord
    from chaos.run import Timings

    kept, gone = place("o1"), place("o2", attempts=[UNAVAILABLE])
    history = [kept, gone, cancel("o2")]
    state = settled([(kept, "PAID"), (gone, "CANCELLED")])
    state.orders["o1"] = dataclasses.replace(state.orders["o1"], payback_points=0)  # half-done
    verdict = check(history, state)
    faults = [
        FaultRecord(FaultKind.KILL_ENVOY, "envoy", started=1.0, healed=1.5, recovered=2.0),
        FaultRecord(
            FaultKind.PROMOTION_SLOW,
            "promotion",
            started=2.0,
            healed=3.0,
            recovered=3.5,
            breaker={"refused": 4, "ejected": 1, "retried": 2},
        ),
    ]
    timings = Timings(load_stopped=10.0, load_ended=10.0, last_fault_end=3.5, settled=12.0)
    meta = {
        "commit": "abc1234",
        "tree_dirty": False,
        "cores": 2,
        "replicas": 2,
        "database": "sqlite",
        "options": {"clients": 1, "seed": 1},
        "folder": str(tmp_path),
    }
    summary = report.build(meta, history, faults, state, verdict, timings, {})
    report.write(summary, history, faults, timings, tmp_path)

    table = (tmp_path / "report.txt").read_text()
    for invariant in summary["invariants"]:
        assert invariant["invariant"] in table
    assert "VIOLATED: no order half-done" in table and "FAILED: 1 violation(s)" in table
    assert "4/1/2" in table  # the breaker counts of the slow promotion
    assert summary["faults"]["kill-envoy"]["count"] == 1
    assert summary["failed_attempts"] == [
        {"operation": "place", "code": "UNAVAILABLE", "reason": "PROMOTION_UNAVAILABLE", "count": 1}
    ]
    assert summary["convergence"]["seconds_after_last_fault"] == 8.5
    assert (tmp_path / "timeline.png").read_bytes().startswith(b"\x89PNG")
