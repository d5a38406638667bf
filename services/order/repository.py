"""Orders in the service's database: the table, the repository and the unit of work."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)

from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_ignoring_conflicts
from services.kit.uow import Repository, UnitOfWork
from services.order.domain import Order, OrderStatus

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("item", String(100), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    # AIP-155: a retried PlaceOrder with the same request id finds its first order here.
    Column("request_id", String(64), nullable=True, unique=True),
    Column("payment_id", String(64), nullable=False),
    Column("decline_reason", String(200), nullable=False),
    Column("points_granted", BigInteger, nullable=False),
    Column("points_reversed", BigInteger, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)
Index("ix_orders_customer", orders.c.customer_id)

_MUTABLE = (
    "status",
    "payment_id",
    "decline_reason",
    "points_granted",
    "points_reversed",
    "update_time",
)

_GET = Statement(select(orders).where(orders.c.order_id == bindparam("order_id")))
# FOR UPDATE locks the row until commit on PostgreSQL; SQLite renders none (its writer holds
# the whole database already).
_GET_FOR_UPDATE = Statement(
    select(orders).where(orders.c.order_id == bindparam("order_id")).with_for_update()
)
_BY_REQUEST_ID = Statement(select(orders).where(orders.c.request_id == bindparam("request_id")))
# A second PlaceOrder with the same request id inserts nothing (and returns no row).
_ADD = insert_ignoring_conflicts(orders, "request_id", returning="order_id")
_SAVE = Statement(
    update(orders)
    .where(orders.c.order_id == bindparam("key"))
    .values({name: bindparam(name) for name in _MUTABLE})
)


def _order(row: Row) -> Order:
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        item=row["item"],
        quantity=row["quantity"],
        unit_price=row["unit_price"],
        status=OrderStatus(row["status"]),
        request_id=row["request_id"] or "",
        payment_id=row["payment_id"],
        decline_reason=row["decline_reason"],
        points_granted=row["points_granted"],
        points_reversed=row["points_reversed"],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
    )


class OrderRepository(Repository):
    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        """The order; `for_update` keeps others from changing it until this unit of work ends."""
        row = await self.session.row(_GET_FOR_UPDATE if for_update else _GET, order_id=order_id)
        return _order(row) if row else None

    async def by_request_id(self, request_id: str) -> Order | None:
        row = await self.session.row(_BY_REQUEST_ID, request_id=request_id)
        return _order(row) if row else None

    async def add(self, order: Order) -> bool:
        """Insert a new order; False (nothing written) if its request id has an order already."""
        row = await self.session.row(
            _ADD,
            order_id=order.order_id,
            customer_id=order.customer_id,
            item=order.item,
            quantity=order.quantity,
            unit_price=order.unit_price,
            status=order.status.value,
            request_id=order.request_id or None,
            payment_id=order.payment_id,
            decline_reason=order.decline_reason,
            points_granted=order.points_granted,
            points_reversed=order.points_reversed,
            create_time=order.create_time,
            update_time=order.update_time,
        )
        if row is None:
            return False
        self._saved(order)
        return True

    async def save(self, order: Order) -> None:
        """Write a changed order."""
        values = {name: getattr(order, name) for name in _MUTABLE}
        values["status"] = order.status.value
        await self.session.execute(_SAVE, key=order.order_id, **values)
        self._saved(order)


class OrderUnitOfWork(UnitOfWork):
    orders: OrderRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.orders = OrderRepository(session)
        return (self.orders,)
