"""Shipping received orders automatically a configured delay after their payment."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from services.kit.clock import utcnow
from services.kit.db import Database
from services.store.domain import StoreOrderStatus
from services.store.repository import StoreRepository

log = logging.getLogger(__name__)


class AutoShipper:
    """Ships every RECEIVED order that was received at least `delay` ago."""

    def __init__(self, database: Database, delay_seconds: float, batch_size: int = 100) -> None:
        if delay_seconds <= 0:
            raise ValueError("auto-ship needs a positive delay")
        self.database = database
        self.delay = timedelta(seconds=delay_seconds)
        self.batch_size = batch_size
        # Look a few times per delay, at most once a second: shipped at most ~1 s late.
        self.poll_seconds = min(max(delay_seconds / 4, 0.05), 1.0)
        self.shipped = 0

    async def run(self) -> None:
        """Ship due orders until cancelled; a failing round is logged and retried."""
        log.info("auto-ship on", extra={"delay_seconds": self.delay.total_seconds()})
        while True:
            try:
                full = await self.ship_due() >= self.batch_size
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("auto-ship round failed; retrying")
                full = False
            if not full:
                await asyncio.sleep(self.poll_seconds)

    async def ship_due(self) -> int:
        """Ship one batch of due orders; returns how many were due."""
        cutoff = utcnow() - self.delay
        # Look before taking the write lock (SQLite): most rounds find nothing.
        async with self.database.unit_of_work(read_only=True) as uow:
            due = await StoreRepository(uow.connection).received_before(cutoff, self.batch_size)
        if not due:
            return 0
        shipped = []
        async with self.database.unit_of_work() as uow:
            orders = StoreRepository(uow.connection)
            for order in due:
                result = order.shipped()
                # Compare-and-set: a ShipOrder call, a cancel or another replica may have won.
                if await orders.save(result, expected=StoreOrderStatus.RECEIVED):
                    uow.emit(*result.events)
                    shipped.append(result)
            await uow.commit()
        for result in shipped:
            log.info("store order shipped automatically", extra={"order_id": result.order_id})
        self.shipped += len(shipped)
        return len(due)
