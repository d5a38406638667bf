"""The end state of a run as plain data: what the checker holds the history against.

observe.py fills it from the running system (the public APIs, and the databases read-only for
what no API shows); tests build it by hand. Statuses are the enum names without their prefix
("PAID", "CANCELLED", …); "" stands for none (an order the store never listed, an order the
payment service has no payment for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OrderState:
    """An order as OrderService.GetOrder shows it (request_id from the order's database)."""

    order_id: str
    customer_id: str
    status: str
    amount: int
    payback_points: int = 0
    payment_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class PaymentState:
    """A row of the payment's database (the API shows one payment by its id, not how many an
    order has); `status` as PaymentService.GetPayment shows it."""

    payment_id: str
    order_id: str
    customer_id: str
    amount: int
    status: str


@dataclass(frozen=True)
class LedgerEntry:
    order_id: str
    kind: str  # GRANT or REVERSAL
    #: Signed, as the ledger shows it: a grant adds points, a reversal takes them (negative).
    points: int


@dataclass(frozen=True)
class Ledger:
    """PromotionService.GetPointBalance: the balance and the entries, oldest first."""

    customer_id: str
    balance: int
    entries: tuple[LedgerEntry, ...] = ()


@dataclass(frozen=True)
class ViewOrder:
    """One order of CustomerService.GetCustomerHistory."""

    order_id: str
    status: str
    payment_status: str
    store_status: str
    amount: int
    points_granted: int = 0
    points_reversed: int = 0


@dataclass(frozen=True)
class View:
    customer_id: str
    point_balance: int
    orders: Mapping[str, ViewOrder] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    service: str
    event_id: str
    event_type: str
    order_id: str
    error: str


@dataclass(frozen=True)
class ConsumerState:
    """JetStream's view of a service's durable consumer."""

    pending: int
    ack_pending: int


@dataclass
class EndState:
    #: Every order the order service holds (the run's stack is fresh: all are the run's).
    orders: dict[str, OrderState] = field(default_factory=dict)
    #: Order ids an acknowledged PlaceOrder named that GetOrder did not find.
    missing_orders: set[str] = field(default_factory=set)
    #: Payments by order id: every row the payment service holds for it.
    payments: dict[str, list[PaymentState]] = field(default_factory=dict)
    #: Cancel requests the payment service has not ended (payment ids).
    pending_cancellations: list[str] = field(default_factory=list)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)
    #: Dealer orders by order id: their status as StoreService.ListStoreOrders lists them.
    store: dict[str, str] = field(default_factory=dict)
    #: Rows left in each service's outbox.
    outbox: dict[str, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: By consumer (service) name.
    consumers: dict[str, ConsumerState] = field(default_factory=dict)
