"""The store's use cases in-process, on an in-memory database: listing, shipping, auto-ship."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from services.kit import errors
from services.kit.clock import utcnow
from services.kit.db import Database
from services.store import usecases
from services.store.domain import StoreOrder, StoreOrderStatus
from services.store.repository import StoreUnitOfWork, metadata
from tests.support.in_memory import in_memory_database, outbox_types


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    async with in_memory_database(metadata) as database:
        yield database


async def record(database: Database, order_id: str, *, details: bool = True) -> None:
    """An order the store has seen paid (and, with `details`, its Ordered)."""
    order = StoreOrder.unseen(order_id, "alice").paid()
    if details:
        order = order.with_details("alice", "Galaxy S25", 1)
    async with StoreUnitOfWork(database) as uow:
        await uow.store_orders.save(order)
        await uow.commit()


async def test_shipping_a_received_order_publishes_shipped_once(database: Database) -> None:
    await record(database, "o-1")
    shipped = await usecases.ship_order(StoreUnitOfWork(database), "o-1")
    assert shipped.status is StoreOrderStatus.SHIPPED
    again = await usecases.ship_order(StoreUnitOfWork(database), "o-1")
    assert again.ship_time == shipped.ship_time
    assert await outbox_types(database) == ["Shipped"]


async def test_an_order_without_its_details_is_shipped_later(database: Database) -> None:
    await record(database, "o-2", details=False)
    with pytest.raises(errors.ServiceError) as later:
        await usecases.ship_order(StoreUnitOfWork(database), "o-2")
    assert later.value.code is grpc.StatusCode.UNAVAILABLE
    assert later.value.reason == "STORE_ORDER_DETAILS_PENDING"


async def test_an_unknown_order_is_not_found(database: Database) -> None:
    with pytest.raises(errors.ServiceError) as missing:
        await usecases.ship_order(StoreUnitOfWork(database), "nope")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


async def test_pages_list_dealer_orders_oldest_first(database: Database) -> None:
    for i in range(5):
        await record(database, f"o-{i}")
    uow = StoreUnitOfWork(database)
    first, more = await usecases.list_store_orders(uow, status=None, after=None, page_size=3)
    assert [o.order_id for o in first] == ["o-0", "o-1", "o-2"] and more
    last = first[-1]
    assert last.receive_time is not None
    rest, more = await usecases.list_store_orders(
        uow, status=None, after=(last.receive_time, last.order_id), page_size=3
    )
    assert [o.order_id for o in rest] == ["o-3", "o-4"] and not more


async def test_auto_ship_ships_what_is_due(database: Database) -> None:
    await record(database, "o-1")
    await record(database, "o-2", details=False)
    assert (
        await usecases.ship_due(StoreUnitOfWork(database), utcnow() - timedelta(hours=1), 10) == 0
    )
    assert await usecases.ship_due(StoreUnitOfWork(database), utcnow(), 10) == 1
    shipped, _ = await usecases.list_store_orders(
        StoreUnitOfWork(database), status=StoreOrderStatus.SHIPPED, after=None, page_size=10
    )
    assert [o.order_id for o in shipped] == ["o-1"]
    assert await outbox_types(database) == ["Shipped"]
