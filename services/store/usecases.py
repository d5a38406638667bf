"""The store's use cases: list dealer orders, ship one, ship the due ones automatically.

In-process tests: tests/unit/test_store_usecases.py.
"""

from __future__ import annotations

import logging
from datetime import datetime

from services.kit import errors
from services.kit.uow import ConcurrentUpdateError
from services.store.domain import (
    DetailsPendingError,
    NotReceivedError,
    OrderCancelledError,
    ShipRefusedError,
    StoreOrder,
    StoreOrderStatus,
)
from services.store.repository import StoreUnitOfWork

log = logging.getLogger(__name__)

#: Tries of a ShipOrder that lost a race with another writer of the same order.
WRITE_ATTEMPTS = 3


def ship_refused(exc: ShipRefusedError) -> errors.ServiceError:
    order_id = exc.order_id
    if isinstance(exc, NotReceivedError):
        return errors.not_found("store_order", order_id)
    if isinstance(exc, OrderCancelledError):
        return errors.failed_precondition(
            "STORE_ORDER_CANCELLED",
            f"store order {order_id!r} was cancelled and cannot be shipped",
            f"storeOrders/{order_id}",
            {"order_id": order_id},
        )
    if isinstance(exc, DetailsPendingError):
        return errors.unavailable(
            "STORE_ORDER_DETAILS_PENDING",
            f"the store has not yet received what to ship for order {order_id!r}; "
            "try again shortly",
            retry_after_seconds=1.0,
            metadata={"order_id": order_id},
        )
    raise AssertionError(f"unmapped refusal {exc!r}")


async def list_store_orders(
    uow: StoreUnitOfWork,
    *,
    status: StoreOrderStatus | None,
    after: tuple[datetime, str] | None,
    page_size: int,
) -> tuple[list[StoreOrder], bool]:
    """One page of dealer orders, oldest first, and whether more follow."""
    async with uow.reading():
        orders = await uow.store_orders.page(status=status, after=after, limit=page_size + 1)
    return orders[:page_size], len(orders) > page_size


async def ship_order(uow: StoreUnitOfWork, order_id: str) -> StoreOrder:
    """Ship a received order (Shipped); shipped already: as it is."""
    for _ in range(WRITE_ATTEMPTS):
        try:
            return await _ship(uow, order_id)
        except ConcurrentUpdateError:
            # A cancel or another ShipOrder won; look again.
            log.debug("ShipOrder raced; retrying")
    raise errors.unavailable(
        "CONCURRENT_UPDATE",
        f"store order {order_id!r} is changing right now; try again",
        retry_after_seconds=0.1,
        metadata={"order_id": order_id},
    )


async def _ship(uow: StoreUnitOfWork, order_id: str) -> StoreOrder:
    async with uow:
        current = await uow.store_orders.get(order_id, for_update=True)
        if current is None:
            raise errors.not_found("store_order", order_id)
        try:
            result = current.shipped()
        except ShipRefusedError as exc:
            raise ship_refused(exc) from None
        if result is current:
            return current  # shipped already: nothing more to do
        await uow.store_orders.save(result)
        await uow.commit()
    log.info("store order shipped", extra={"item": result.item, "quantity": result.quantity})
    return result


async def ship_due(uow: StoreUnitOfWork, cutoff: datetime, limit: int) -> int:
    """Ship (at most `limit`) RECEIVED orders received before `cutoff`; returns how many."""
    # Look on the reader first: most rounds find nothing and need no write turn.
    async with uow.reading():
        if not await uow.store_orders.received_before(cutoff, limit):
            return 0
    async with uow:
        due = await uow.store_orders.received_before(cutoff, limit)
        for order in due:
            await uow.store_orders.save(order.shipped())
        await uow.commit()
    for order in due:
        log.info("store order shipped automatically", extra={"order_id": order.order_id})
    return len(due)
