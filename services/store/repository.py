"""Dealer orders in the service's database: the table, the repository and the unit of work."""

from __future__ import annotations

from collections.abc import Sequence
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
    bindparam,
    or_,
    select,
    update,
)

from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_row
from services.kit.uow import ConcurrentUpdateError, Repository, UnitOfWork
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


_GET = Statement(select(store_orders).where(store_orders.c.order_id == bindparam("order_id")))
_GET_FOR_UPDATE = Statement(
    select(store_orders).where(store_orders.c.order_id == bindparam("order_id")).with_for_update()
)
_ADD = insert_row(store_orders)
# Compare-and-set on the status: an order changes only from the status it was read in.
_SAVE = Statement(
    update(store_orders)
    .where(
        store_orders.c.order_id == bindparam("key"),
        store_orders.c.status == bindparam("expected"),
    )
    .values({c.name: bindparam(c.name) for c in store_orders.columns if c.name != "order_id"})
)
_LISTED = select(store_orders).where(store_orders.c.receive_time.is_not(None))
_AFTER = or_(
    store_orders.c.receive_time > bindparam("after_time"),
    and_(
        store_orders.c.receive_time == bindparam("after_time"),
        store_orders.c.order_id > bindparam("after_id"),
    ),
)
_ORDER = (store_orders.c.receive_time, store_orders.c.order_id)
_BY_STATUS = store_orders.c.status == bindparam("status")
#: Dealer orders oldest first, by `(receive_time, order_id)`: with or without a status filter,
#: from the start or after a page token's key.
_PAGES = {
    (by_status, after): Statement(
        _LISTED.where(*([_BY_STATUS] if by_status else []), *([_AFTER] if after else []))
        .order_by(*_ORDER)
        .limit(bindparam("limit"))
    )
    for by_status in (False, True)
    for after in (False, True)
}
_RECEIVED_BEFORE = Statement(
    select(store_orders)
    .where(
        store_orders.c.status == StoreOrderStatus.RECEIVED.value,
        store_orders.c.receive_time <= bindparam("time"),
        store_orders.c.item != "",
    )
    .order_by(*_ORDER)
    .limit(bindparam("limit"))
)


def _order(row: Row) -> StoreOrder:
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


class StoreOrderRepository(Repository):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        #: The status each order had when this unit of work read it (for `save`).
        self._read: dict[str, StoreOrderStatus] = {}

    def _remember(self, order: StoreOrder) -> StoreOrder:
        self._read[order.order_id] = order.status
        return order

    async def get(self, order_id: str, *, for_update: bool = False) -> StoreOrder | None:
        """The order's record; `for_update` keeps others from changing it until this unit of
        work ends (PostgreSQL; SQLite's writer holds the whole database anyway)."""
        row = await self.session.row(_GET_FOR_UPDATE if for_update else _GET, order_id=order_id)
        return self._remember(_order(row)) if row else None

    async def save(self, order: StoreOrder) -> None:
        """Write a new record, or a changed one read in this unit of work. Raises
        ConcurrentUpdateError if another writer changed it since (nothing is written then) and
        the database's IntegrityError if another writer created it first."""
        read = self._read.get(order.order_id)
        if read is None:
            await self.session.execute(_ADD, order_id=order.order_id, **_values(order))
        else:
            changed = await self.session.execute(
                _SAVE, key=order.order_id, expected=read.value, **_values(order)
            )
            if changed != 1:
                raise ConcurrentUpdateError(f"store order {order.order_id!r} changed")
        self._remember(order)
        self._saved(order)

    async def page(
        self,
        *,
        status: StoreOrderStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoreOrder]:
        """Dealer orders (paid ones) oldest first, after the `(receive_time, order_id)` key."""
        values: dict[str, object] = {"limit": limit}
        if status is not None:
            values["status"] = status.value
        if after is not None:
            values["after_time"], values["after_id"] = after
        statement = _PAGES[(status is not None, after is not None)]
        return [self._remember(_order(row)) for row in await self.session.rows(statement, **values)]

    async def received_before(self, time: datetime, limit: int) -> list[StoreOrder]:
        """RECEIVED orders with their details, received at or before `time`, oldest first."""
        rows = await self.session.rows(_RECEIVED_BEFORE, time=time, limit=limit)
        return [self._remember(_order(row)) for row in rows]


class StoreUnitOfWork(UnitOfWork):
    store_orders: StoreOrderRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.store_orders = StoreOrderRepository(session)
        return (self.store_orders,)
