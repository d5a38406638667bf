"""The checker: the history of a run against the end state the system settled in.

Pure: it is given both (observe.py reads the state of a running system; tests build one by
hand) and returns, per invariant, how many subjects it checked and which violate it. The
history says what each order may end as:

- PlaceOrder answered PAYMENT_DECLINED: declined. Answered PAID: paid, unless a cancel was
  asked for. CancelOrder answered: cancelled. CancelOrder refused outright (every attempt a
  definite "no"): nothing changed, paid.
- An operation that ended unknown, or failed after an attempt that might have taken effect
  (UNAVAILABLE is "not now": payment may still finish a cancel whose points came back), may
  end either way: but whole, never in between.

"Whole" is the saga's end seen in every service at once: PAID with its points (10 %, floor),
one approved payment and a received dealer order; CANCELLED with a cancelled payment, the
grant reversed and the dealer order cancelled; PAYMENT_DECLINED with a declined payment, no
points, no dealer order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.history import Kind, Operation, Outcome
from chaos.state import EndState, LedgerEntry, OrderState

PAID, CANCELLED, DECLINED, ORDERED = "PAID", "CANCELLED", "PAYMENT_DECLINED", "ORDERED"
GRANT, REVERSAL = "GRANT", "REVERSAL"
#: A whole order's payment and dealer order ("" = none), by order status.
PAYMENT_OF = {PAID: "PAID", CANCELLED: "CANCELLED", DECLINED: "DECLINED"}
STORE_OF = {PAID: "RECEIVED", CANCELLED: "CANCELLED", DECLINED: ""}
#: The services' PHONESELLER_POINTS_RATE_PERCENT default (the stack does not change it).
POINTS_RATE_PERCENT = 10


@dataclass(frozen=True)
class Violation:
    #: What violates it: an order id, a customer id, a service or an event id.
    subject: str
    message: str


@dataclass(frozen=True)
class Invariant:
    key: str
    title: str


ACKNOWLEDGED = Invariant("acknowledged", "no acknowledged order lost, none from nowhere")
WHOLE = Invariant("whole", "no order half-done (unknown outcomes included)")
PAYMENTS = Invariant("payments", "one payment per order as its status says; no double charge")
POINTS = Invariant("points", "points granted and reversed once each, by the right amount")
BALANCES = Invariant("balances", "ledger balance = 10 % of paid orders; never negative")
VIEW = Invariant("view", "the customer view agrees with every service")
EVENTS = Invariant("events", "outboxes drained, no unexplained dead letter, consumers caught up")
INVARIANTS = (ACKNOWLEDGED, WHOLE, PAYMENTS, POINTS, BALANCES, VIEW, EVENTS)


@dataclass
class Result:
    invariant: Invariant
    checked: int = 0
    violations: list[Violation] = field(default_factory=list)

    def fail(self, subject: str, message: str) -> None:
        self.violations.append(Violation(subject, message))


@dataclass
class Verdict:
    results: list[Result]

    @property
    def ok(self) -> bool:
        return not any(r.violations for r in self.results)

    @property
    def violations(self) -> int:
        return sum(len(r.violations) for r in self.results)

    def result(self, invariant: Invariant) -> Result:
        return next(r for r in self.results if r.invariant == invariant)

    def as_json(self, examples: int | None = None) -> list[dict[str, Any]]:
        return [
            {
                "key": r.invariant.key,
                "invariant": r.invariant.title,
                "checked": r.checked,
                "violations": len(r.violations),
                "examples": [
                    {"subject": v.subject, "message": v.message} for v in r.violations[:examples]
                ],
            }
            for r in self.results
        ]


def points_for(amount: int, rate_percent: int = POINTS_RATE_PERCENT) -> int:
    return amount * rate_percent // 100


# --- what the history says -----------------------------------------------------------------


@dataclass
class Story:
    """Everything the history says about one order."""

    place: Operation | None = None
    cancels: list[Operation] = field(default_factory=list)

    def expected(self) -> frozenset[str]:
        """The end statuses this order may have."""
        if self.place is None:
            return frozenset()
        answer = self.place.answer or {}
        if self.place.outcome is not Outcome.OK:
            return frozenset({PAID, DECLINED})  # unknown: never cancelled, so either result
        if answer.get("status") == DECLINED:
            return frozenset({DECLINED})
        if answer.get("status") != PAID:
            return frozenset({PAID, DECLINED})
        if any(c.outcome is Outcome.OK for c in self.cancels):
            return frozenset({CANCELLED})
        if any(c.ambiguous for c in self.cancels):
            return frozenset({PAID, CANCELLED})
        return frozenset({PAID})

    @property
    def acknowledged(self) -> bool:
        """Some operation on it ended with an answer the client can hold the system to."""
        return (self.place is not None and self.place.outcome is Outcome.OK) and all(
            c.outcome is Outcome.OK or not c.ambiguous for c in self.cancels
        )

    def told(self) -> str:
        """The history in a few words, for a violation's message."""
        parts = [describe(self.place)] if self.place else ["never placed"]
        parts += [describe(c) for c in self.cancels]
        return "; ".join(parts)


def describe(op: Operation) -> str:
    if op.outcome is Outcome.OK:
        status = (op.answer or {}).get("status", "")
        said = f"ok {status}".rstrip()
    else:
        said = f"{op.outcome.value} {op.code} {op.reason}".rstrip()
    retries = f" after {len(op.attempts)} failed attempt(s)" if op.attempts else ""
    return f"{op.kind.value} {op.request_id} at {op.invoked:.1f}s {said}{retries}"


def stories(history: Sequence[Operation], state: EndState) -> dict[str, Story]:
    """By order id: the PlaceOrder that made it (by answer, else by request_id) and its
    cancels. Unknown PlaceOrders that made no order have no story."""
    places = {op.request_id: op for op in history if op.kind is Kind.PLACE}
    found: dict[str, Story] = defaultdict(Story)
    for op in places.values():
        if op.outcome is Outcome.OK and op.order_id:
            found[op.order_id].place = op
    for order in state.orders.values():
        placed = places.get(order.request_id)
        if placed is not None and order.order_id not in found:
            found[order.order_id].place = placed
    for op in history:
        if op.kind is Kind.CANCEL:
            found[op.order_id].cancels.append(op)
    return dict(found)


# --- the invariants ------------------------------------------------------------------------


def check(
    history: Sequence[Operation],
    state: EndState,
    *,
    poison: Mapping[str, frozenset[str]] | None = None,
    rate_percent: int = POINTS_RATE_PERCENT,
) -> Verdict:
    """Every invariant of docs/chaos.md. `poison`: the event ids injected on purpose, each
    with the services that must have parked it in their dead letters."""
    told = stories(history, state)
    entries = entries_by_order(state)
    return Verdict(
        [
            check_acknowledged(history, state, told),
            check_whole(state, told, rate_percent),
            check_payments(state),
            check_points(state, entries, rate_percent),
            check_balances(history, state, rate_percent),
            check_view(state, entries),
            check_events(state, poison or {}),
        ]
    )


def check_acknowledged(
    history: Sequence[Operation], state: EndState, told: Mapping[str, Story]
) -> Result:
    result = Result(ACKNOWLEDGED)
    for order_id, story in told.items():
        place = story.place
        if place is None or place.outcome is not Outcome.OK:
            continue
        result.checked += 1
        order = state.orders.get(order_id)
        if order is None:
            result.fail(order_id, f"lost: GetOrder does not find it; {story.told()}")
            continue
        if (order.customer_id, order.amount) != (place.customer, place.amount):
            result.fail(
                order_id,
                f"placed for {place.customer} / {place.amount} won, holds {order.customer_id}"
                f" / {order.amount} won",
            )
        if story.acknowledged and order.status not in story.expected():
            result.fail(
                order_id,
                f"{order.status}, but the answers promised {' or '.join(sorted(story.expected()))}"
                f"; {story.told()}",
            )
        for cancel in story.cancels:
            status = (cancel.answer or {}).get("status")
            if cancel.outcome is Outcome.OK and status != CANCELLED:
                result.fail(order_id, f"CancelOrder answered {status}; {describe(cancel)}")
    for order_id, order in state.orders.items():
        if order_id not in told or told[order_id].place is None:
            result.fail(order_id, f"an order no client placed: {order}")
    by_request: dict[str, list[str]] = defaultdict(list)
    for order in state.orders.values():
        if order.request_id:
            by_request[order.request_id].append(order.order_id)
    for request_id, order_ids in by_request.items():
        if len(order_ids) > 1:
            result.fail(request_id, f"one request, {len(order_ids)} orders: {sorted(order_ids)}")
    return result


def check_whole(state: EndState, told: Mapping[str, Story], rate_percent: int) -> Result:
    result = Result(WHOLE)
    for order in state.orders.values():
        result.checked += 1
        story = told.get(order.order_id, Story())
        why = half_done(order, state.store.get(order.order_id, ""), rate_percent)
        if why:
            result.fail(order.order_id, f"{why}; {story.told()}")
        elif (
            story.place is not None
            and not story.acknowledged  # those are held to their answers above
            and order.status not in story.expected()
        ):
            result.fail(
                order.order_id,
                f"ended {order.status}, which no answer allows; {story.told()}",
            )
    return result


def half_done(order: OrderState, store_status: str, rate_percent: int) -> str:
    """Why the order is not at a whole end ("" when it is), as the order and store show it."""
    if order.status not in PAYMENT_OF:
        return f"left {order.status or 'without a status'}"
    points = points_for(order.amount, rate_percent) if order.status == PAID else 0
    if order.payback_points != points:
        return f"{order.status} with {order.payback_points} points, not {points}"
    if store_status != STORE_OF[order.status]:
        return f"{order.status}, dealer order {store_status or 'none'}"
    return ""


def check_payments(state: EndState) -> Result:
    result = Result(PAYMENTS)
    for order in state.orders.values():
        result.checked += 1
        payments = state.payments.get(order.order_id, [])
        if len(payments) > 1:
            ids = [p.payment_id for p in payments]
            result.fail(order.order_id, f"charged {len(payments)} times: {ids}")
            continue
        wanted = PAYMENT_OF.get(order.status)
        if wanted is None:
            if payments:
                result.fail(
                    order.order_id, f"{order.status}, yet payment {payments[0].status} exists"
                )
            continue
        if not payments:
            result.fail(order.order_id, f"{order.status} without a payment")
            continue
        payment = payments[0]
        if payment.status != wanted:
            result.fail(order.order_id, f"{order.status} with payment {payment.status}")
        if (payment.customer_id, payment.amount) != (order.customer_id, order.amount):
            result.fail(
                order.order_id,
                f"payment of {payment.amount} won for {payment.customer_id}, order of"
                f" {order.amount} won for {order.customer_id}",
            )
        if order.payment_id and order.payment_id != payment.payment_id:
            result.fail(
                order.order_id, f"names payment {order.payment_id}, holds {payment.payment_id}"
            )
    for order_id, payments in state.payments.items():
        if order_id not in state.orders:
            result.fail(order_id, f"payment for no order: {[p.payment_id for p in payments]}")
    for payment_id in state.pending_cancellations:
        result.fail(payment_id, "a cancel request the payment service never ended")
    return result


def entries_by_order(state: EndState) -> dict[str, list[LedgerEntry]]:
    found: dict[str, list[LedgerEntry]] = defaultdict(list)
    for ledger in state.ledgers.values():
        for entry in ledger.entries:
            found[entry.order_id].append(entry)
    return found


def check_points(
    state: EndState, entries: Mapping[str, list[LedgerEntry]], rate_percent: int
) -> Result:
    result = Result(POINTS)
    for order in state.orders.values():
        result.checked += 1
        mine = entries.get(order.order_id, [])
        grants = [e.points for e in mine if e.kind == GRANT]
        reversals = [e.points for e in mine if e.kind == REVERSAL]
        if len(grants) > 1 or len(reversals) > 1:
            result.fail(order.order_id, f"granted {grants}, reversed {reversals}: more than once")
            continue
        points = points_for(order.amount, rate_percent)
        wanted: tuple[list[int], list[int]] = {
            PAID: ([points], []),
            CANCELLED: ([points], [-points]),
        }.get(order.status, ([], []))
        if (grants, reversals) != wanted:
            result.fail(
                order.order_id,
                f"{order.status}: granted {grants}, reversed {reversals}; wanted granted"
                f" {wanted[0]}, reversed {wanted[1]}",
            )
    for order_id in entries.keys() - state.orders.keys():
        result.fail(order_id, "ledger entries for no order")
    return result


def check_balances(history: Sequence[Operation], state: EndState, rate_percent: int) -> Result:
    result = Result(BALANCES)
    paid: dict[str, int] = defaultdict(int)
    for order in state.orders.values():
        if order.status == PAID:
            paid[order.customer_id] += points_for(order.amount, rate_percent)
    customers = set(paid) | set(state.ledgers) | {op.customer for op in history}
    for customer in sorted(customers):
        result.checked += 1
        ledger = state.ledgers.get(customer)
        balance = ledger.balance if ledger else 0
        if balance != paid[customer]:
            result.fail(customer, f"balance {balance}, paid orders earned {paid[customer]}")
        running = 0
        for entry in ledger.entries if ledger else ():
            running += entry.points
            if running < 0:
                result.fail(customer, f"the ledger goes to {running} at order {entry.order_id}")
                break
        if ledger and running != balance:
            result.fail(customer, f"entries add up to {running}, balance says {balance}")
    for read, ceiling in observed_balances(history, rate_percent):
        seen = int((read.answer or {}).get("balance", 0))
        if not 0 <= seen <= ceiling:
            result.fail(
                read.customer,
                f"read a balance of {seen} at {read.completed:.1f}s; orders placed by then"
                f" could earn at most {ceiling}",
            )
    return result


def observed_balances(
    history: Sequence[Operation], rate_percent: int
) -> Iterable[tuple[Operation, int]]:
    """Each balance read, with the most its customer's orders invoked by then could earn."""
    places: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        if op.kind is Kind.PLACE:
            places[op.customer].append(op)
    for read in history:
        if read.kind is not Kind.BALANCE or read.outcome is not Outcome.OK:
            continue
        ended = read.completed if read.completed is not None else float("inf")
        ceiling = sum(
            points_for(p.amount, rate_percent) for p in places[read.customer] if p.invoked < ended
        )
        yield read, ceiling


def check_view(state: EndState, entries: Mapping[str, list[LedgerEntry]]) -> Result:
    result = Result(VIEW)
    for order in state.orders.values():
        result.checked += 1
        view = state.views.get(order.customer_id)
        shown = view.orders.get(order.order_id) if view else None
        if shown is None:
            result.fail(order.order_id, f"{order.status} but not in {order.customer_id}'s view")
            continue
        payments = state.payments.get(order.order_id, [])
        mine = entries.get(order.order_id, [])
        truth = (
            order.status,
            payments[0].status if len(payments) == 1 else "",
            state.store.get(order.order_id, ""),
            order.amount,
            sum(e.points for e in mine if e.kind == GRANT),
            -sum(e.points for e in mine if e.kind == REVERSAL),
        )
        seen = (
            shown.status,
            shown.payment_status,
            shown.store_status,
            shown.amount,
            shown.points_granted,
            shown.points_reversed,
        )
        if seen != truth:
            fields = ("status", "payment", "store", "amount", "granted", "reversed")
            differ = [
                f"{name} {s!r} (services: {t!r})"
                for name, s, t in zip(fields, seen, truth, strict=True)
                if s != t
            ]
            result.fail(order.order_id, "view shows " + ", ".join(differ))
    for customer, view in sorted(state.views.items()):
        for order_id in view.orders.keys() - state.orders.keys():
            result.fail(order_id, f"in {customer}'s view, unknown to the order service")
        ledger = state.ledgers.get(customer)
        balance = ledger.balance if ledger else 0
        if view.point_balance != balance:
            result.fail(customer, f"view balance {view.point_balance}, ledger {balance}")
    return result


def check_events(state: EndState, poison: Mapping[str, frozenset[str]]) -> Result:
    result = Result(EVENTS)
    for service, rows in sorted(state.outbox.items()):
        result.checked += 1
        if rows:
            result.fail(service, f"{rows} event(s) left in the outbox")
    parked: dict[str, set[str]] = defaultdict(set)
    for letter in state.dead_letters:
        parked[letter.event_id].add(letter.service)
        if letter.event_id not in poison:
            result.fail(
                letter.event_id,
                f"dead letter in {letter.service}: {letter.event_type} of order"
                f" {letter.order_id or '?'}: {letter.error[:200]}",
            )
    for event_id, services in sorted(poison.items()):
        result.checked += 1
        for service in sorted(services - parked[event_id]):
            result.fail(event_id, f"injected poison event not parked by {service}")
    for name, consumer in sorted(state.consumers.items()):
        result.checked += 1
        if consumer.pending or consumer.ack_pending:
            result.fail(
                name,
                f"consumer behind: {consumer.pending} pending, {consumer.ack_pending} unacked",
            )
    return result
