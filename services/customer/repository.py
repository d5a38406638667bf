"""The customer view in the service's database: tables, repository and unit of work.

Two tables: `customer_timeline` keeps every fact (event) once, keyed by its event id, and is
the source of truth of the view; `customer_orders` keeps one row per order, the projection of
that order's facts (`domain.project`). `apply` writes a whole batch of facts in a fixed number
of statements, however many events and orders the batch holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    or_,
    select,
    update,
)

from services.customer.domain import (
    CustomerHistory,
    EventType,
    Fact,
    OrderStatus,
    OrderView,
    PaymentStatus,
    StoreStatus,
    distinct,
    history,
    project,
    timeline,
)
from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_row
from services.kit.uow import Repository, UnitOfWork

metadata = MetaData()

#: Every fact the view has seen, once per event id. The view rows are derived from these.
customer_timeline = Table(
    "customer_timeline",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("event_type", String(32), nullable=False),
    Column("order_id", String(64), nullable=False, index=True),
    Column("customer_id", String(64), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("item", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("payment_id", String(64), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
)

#: One row per order: `domain.project` of the order's facts.
customer_orders = Table(
    "customer_orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("item", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("payment_status", String(16), nullable=True),
    Column("store_status", String(16), nullable=True),
    Column("payment_id", String(64), nullable=False),
    Column("points_granted", BigInteger, nullable=False),
    Column("points_reversed", BigInteger, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

# GetCustomerHistory: a customer's orders, newest first.
Index(
    "ix_customer_orders_customer",
    customer_orders.c.customer_id,
    customer_orders.c.create_time,
)

#: How far `python -m services.customer.rebuild` has replayed a stream into this database.
customer_replay = Table(
    "customer_replay",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("events_applied", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

_FACT_COLUMNS = tuple(c.name for c in customer_timeline.columns)

_LOCK_VIEWS = Statement(
    select(customer_orders.c.order_id)
    .where(customer_orders.c.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(customer_orders.c.order_id)
    .with_for_update()
)
# The facts already known about these orders, and any already known incoming id (an event id
# is applied once, even if a malformed copy names another order).
_KNOWN_FACTS = Statement(
    select(customer_timeline).where(
        or_(
            customer_timeline.c.order_id.in_(bindparam("order_ids", expanding=True)),
            customer_timeline.c.event_id.in_(bindparam("event_ids", expanding=True)),
        )
    )
)
_ADD_FACT = insert_row(customer_timeline)
_ADD_VIEW = insert_row(customer_orders)
_SAVE_VIEW = Statement(
    update(customer_orders)
    .where(customer_orders.c.order_id == bindparam("key"))
    .values({c.name: bindparam(c.name) for c in customer_orders.columns})
)
_VIEWS_OF = Statement(
    select(customer_orders).where(customer_orders.c.customer_id == bindparam("customer_id"))
)
_FACTS_OF_CUSTOMER = Statement(
    select(customer_timeline).where(
        customer_timeline.c.order_id.in_(
            select(customer_orders.c.order_id).where(
                customer_orders.c.customer_id == bindparam("customer_id")
            )
        )
    )
)
_FACTS_OF_ORDER = Statement(
    select(customer_timeline).where(customer_timeline.c.order_id == bindparam("order_id"))
)
_COUNT_ORDERS = Statement(select(func.count()).select_from(customer_orders))
_COUNT_FACTS = Statement(select(func.count()).select_from(customer_timeline))
_CHECKPOINT = Statement(
    select(customer_replay).where(customer_replay.c.stream == bindparam("stream"))
)
_ADD_CHECKPOINT = insert_row(customer_replay)
_SAVE_CHECKPOINT = Statement(
    update(customer_replay)
    .where(customer_replay.c.stream == bindparam("stream"))
    .values(
        last_sequence=bindparam("last_sequence"),
        events_applied=bindparam("events_applied"),
        updated_at=bindparam("updated_at"),
    )
)


def _fact_row(fact: Fact) -> dict[str, Any]:
    return {name: getattr(fact, name) for name in _FACT_COLUMNS}


def _fact(row: Row) -> Fact:
    values = {name: row[name] for name in _FACT_COLUMNS}
    values["event_type"] = EventType(values["event_type"])
    values["occurred_at"] = as_utc(values["occurred_at"])
    return Fact(**values)


def _view_row(view: OrderView) -> dict[str, Any]:
    return {
        "order_id": view.order_id,
        "customer_id": view.customer_id,
        "item": view.item,
        "quantity": view.quantity,
        "unit_price": view.unit_price,
        "amount": view.amount,
        "status": view.status.value,
        "payment_status": view.payment_status.value if view.payment_status else None,
        "store_status": view.store_status.value if view.store_status else None,
        "payment_id": view.payment_id,
        "points_granted": view.points_granted,
        "points_reversed": view.points_reversed,
        "event_count": view.event_count,
        "create_time": view.create_time,
        "update_time": view.update_time,
    }


def _view(row: Row, facts: Iterable[Fact]) -> OrderView:
    return OrderView(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        item=row["item"],
        quantity=row["quantity"],
        unit_price=row["unit_price"],
        amount=row["amount"],
        status=OrderStatus(row["status"]),
        payment_status=PaymentStatus(row["payment_status"]) if row["payment_status"] else None,
        store_status=StoreStatus(row["store_status"]) if row["store_status"] else None,
        payment_id=row["payment_id"],
        points_granted=row["points_granted"],
        points_reversed=row["points_reversed"],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
        event_count=row["event_count"],
        timeline=timeline(facts),
    )


@dataclass(frozen=True)
class ReplayCheckpoint:
    stream: str
    last_sequence: int
    events_applied: int


class CustomerViewRepository(Repository):
    async def apply(self, facts: Iterable[Fact]) -> int:
        """Add the facts not seen before and re-project their orders; returns how many were new.

        Four statements whatever the batch size: lock the orders' view rows, read what is known
        of them, insert the new facts, write the new views (insert and/or update). On SQLite
        the one writer already serialises batches; on PostgreSQL the view rows are locked (FOR
        UPDATE) before the facts are read, so a concurrent batch about the same order either
        committed before our read (we see its facts) or waits for us (it sees ours); two
        batches creating the same order's first row collide on its primary key and the loser
        is retried by the consumer.
        """
        incoming = distinct(facts)
        if not incoming:
            return 0
        order_ids = sorted({f.order_id for f in incoming})
        event_ids = [f.event_id for f in incoming]
        locked = await self.session.rows(_LOCK_VIEWS, order_ids=order_ids)
        existing_views = {row["order_id"] for row in locked}
        known_rows = await self.session.rows(_KNOWN_FACTS, order_ids=order_ids, event_ids=event_ids)
        known = [_fact(row) for row in known_rows]
        known_ids = {f.event_id for f in known}
        fresh = [f for f in incoming if f.event_id not in known_ids]
        if not fresh:
            return 0
        await self.session.execute_many(_ADD_FACT, [_fact_row(f) for f in fresh])

        by_order: dict[str, list[Fact]] = defaultdict(list)
        wanted = set(order_ids)
        for fact in known:
            if fact.order_id in wanted:
                by_order[fact.order_id].append(fact)
        changed = sorted({f.order_id for f in fresh})
        for fact in fresh:
            by_order[fact.order_id].append(fact)
        views = [_view_row(project(by_order[order_id])) for order_id in changed]
        await self.session.execute_many(
            _ADD_VIEW, [row for row in views if row["order_id"] not in existing_views]
        )
        await self.session.execute_many(
            _SAVE_VIEW,
            [{**row, "key": row["order_id"]} for row in views if row["order_id"] in existing_views],
        )
        return len(fresh)

    async def history(self, customer_id: str) -> CustomerHistory:
        """Every order of a customer, newest first, with its timeline (two statements)."""
        rows = await self.session.rows(_VIEWS_OF, customer_id=customer_id)
        if not rows:
            return CustomerHistory(customer_id, ())
        facts: dict[str, list[Fact]] = defaultdict(list)
        for row in await self.session.rows(_FACTS_OF_CUSTOMER, customer_id=customer_id):
            facts[row["order_id"]].append(_fact(row))
        return history(customer_id, [_view(row, facts[row["order_id"]]) for row in rows])

    async def project_order(self, order_id: str) -> OrderView | None:
        """The order's view computed afresh from its stored facts (for checks and repairs)."""
        rows = await self.session.rows(_FACTS_OF_ORDER, order_id=order_id)
        facts = [_fact(row) for row in rows]
        return project(facts) if facts else None

    async def count_orders(self) -> int:
        return int(await self.session.scalar(_COUNT_ORDERS) or 0)

    async def count_facts(self) -> int:
        return int(await self.session.scalar(_COUNT_FACTS) or 0)

    async def checkpoint(self, stream: str) -> ReplayCheckpoint | None:
        row = await self.session.row(_CHECKPOINT, stream=stream)
        if row is None:
            return None
        return ReplayCheckpoint(row["stream"], row["last_sequence"], row["events_applied"])

    async def save_checkpoint(
        self, checkpoint: ReplayCheckpoint, previous: ReplayCheckpoint | None, now: datetime
    ) -> None:
        values = {
            "stream": checkpoint.stream,
            "last_sequence": checkpoint.last_sequence,
            "events_applied": checkpoint.events_applied,
            "updated_at": now,
        }
        await self.session.execute(
            _ADD_CHECKPOINT if previous is None else _SAVE_CHECKPOINT, **values
        )


class CustomerUnitOfWork(UnitOfWork):
    views: CustomerViewRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.views = CustomerViewRepository(session)
        return (self.views,)
