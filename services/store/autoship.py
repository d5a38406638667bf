"""Shipping received orders automatically a configured delay after their payment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from services.kit.clock import utcnow
from services.store.repository import StoreUnitOfWork
from services.store.usecases import ship_due

log = logging.getLogger(__name__)


class AutoShipper:
    """Ships every RECEIVED order that was received at least `delay` ago."""

    def __init__(
        self,
        unit_of_work: Callable[[], StoreUnitOfWork],
        delay_seconds: float,
        batch_size: int = 100,
    ) -> None:
        if delay_seconds <= 0:
            raise ValueError("auto-ship needs a positive delay")
        self.unit_of_work = unit_of_work
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
        shipped = await ship_due(self.unit_of_work(), utcnow() - self.delay, self.batch_size)
        self.shipped += shipped
        return shipped
