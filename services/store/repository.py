"""Dealer orders in the service's database (SQLAlchemy Core)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import as_utc
from services.store.domain import StoreOrder, StoreOrderStatus

metadata = MetaData()

store_orders = Table(
    "store_orders",
    metadata,
    # One record per order, whatever order its events arrive in.
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("item", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("receive_time", DateTime(timezone=True), nullable=True),
    Column("ship_time", DateTime(timezone=True), nullable=True),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

# Listing pages through dealer orders by (receive_time, order_id), with or without a status.
Index("ix_store_orders_listing", store_orders.c.receive_time, store_orders.c.order_id)
Index(
    "ix_store_orders_status_listing",
    store_orders.c.status,
    store_orders.c.receive_time,
    store_orders.c.order_id,
)


def _order(row: RowMapping) -> StoreOrder:
    receive_time = row["receive_time"]
    ship_time = row["ship_time"]
    return StoreOrder(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        item=row["item"],
        quantity=row["quantity"],
        status=StoreOrderStatus(row["status"]),
        receive_time=as_utc(receive_time) if receive_time is not None else None,
        ship_time=as_utc(ship_time) if ship_time is not None else None,
        update_time=as_utc(row["update_time"]),
    )


def _values(order: StoreOrder) -> dict[str, object]:
    return {
        "customer_id": order.customer_id,
        "item": order.item,
        "quantity": order.quantity,
        "status": order.status.value,
        "receive_time": order.receive_time,
        "ship_time": order.ship_time,
        "update_time": order.update_time,
    }


class StoreRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def get(self, order_id: str, *, for_update: bool = False) -> StoreOrder | None:
        """The order's record; `for_update` locks its row until the transaction ends
        (PostgreSQL; SQLite's write transactions are serialized already)."""
        query = select(store_orders).where(store_orders.c.order_id == order_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.connection.execute(query)).mappings().first()
        return _order(row) if row else None

    async def add(self, order: StoreOrder) -> None:
        await self.connection.execute(
            insert(store_orders).values(order_id=order.order_id, **_values(order))
        )

    async def save(self, order: StoreOrder, expected: StoreOrderStatus) -> bool:
        """Compare-and-set on the status; False if another writer changed it first."""
        result = await self.connection.execute(
            update(store_orders)
            .where(
                store_orders.c.order_id == order.order_id,
                store_orders.c.status == expected.value,
            )
            .values(**_values(order))
        )
        return result.rowcount == 1

    async def page(
        self,
        *,
        status: StoreOrderStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoreOrder]:
        """Dealer orders (paid ones) oldest first, after the `(receive_time, order_id)` key."""
        query = select(store_orders).where(store_orders.c.receive_time.is_not(None))
        if status is not None:
            query = query.where(store_orders.c.status == status.value)
        if after is not None:
            time, order_id = after
            query = query.where(
                or_(
                    store_orders.c.receive_time > time,
                    and_(store_orders.c.receive_time == time, store_orders.c.order_id > order_id),
                )
            )
        query = query.order_by(store_orders.c.receive_time, store_orders.c.order_id).limit(limit)
        rows = (await self.connection.execute(query)).mappings().all()
        return [_order(row) for row in rows]

    async def received_before(self, time: datetime, limit: int) -> list[StoreOrder]:
        """RECEIVED orders with their details, received at or before `time`, oldest first."""
        rows = (
            (
                await self.connection.execute(
                    select(store_orders)
                    .where(
                        store_orders.c.status == StoreOrderStatus.RECEIVED.value,
                        store_orders.c.receive_time <= time,
                        store_orders.c.item != "",
                    )
                    .order_by(store_orders.c.receive_time, store_orders.c.order_id)
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
        return [_order(row) for row in rows]
