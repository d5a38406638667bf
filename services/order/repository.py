"""Orders in the service's database (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import as_utc
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


def _order(row: RowMapping) -> Order:
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


class OrderRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        """The order; `for_update` locks its row until commit (PostgreSQL; SQLite locks the
        whole database for every writing transaction anyway)."""
        query = select(orders).where(orders.c.order_id == order_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.connection.execute(query)).mappings().first()
        return _order(row) if row else None

    async def by_request_id(self, request_id: str) -> Order | None:
        row = (
            (await self.connection.execute(select(orders).where(orders.c.request_id == request_id)))
            .mappings()
            .first()
        )
        return _order(row) if row else None

    async def add(self, order: Order) -> None:
        await self.connection.execute(
            insert(orders).values(
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
        )

    async def save(self, order: Order) -> None:
        values = {name: getattr(order, name) for name in _MUTABLE}
        values["status"] = order.status.value
        await self.connection.execute(
            update(orders).where(orders.c.order_id == order.order_id).values(**values)
        )
