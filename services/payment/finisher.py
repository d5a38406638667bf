"""Finishing (or dropping) the cancels whose clawback ended without an answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.payment.repository import PaymentUnitOfWork
from services.payment.usecases import PromotionPort, finish_cancellations

log = logging.getLogger(__name__)


class CancellationFinisher:
    """Settles due cancel requests every `poll_seconds` (usecases.finish_cancellations)."""

    def __init__(
        self,
        unit_of_work: Callable[[], PaymentUnitOfWork],
        promotion: PromotionPort,
        poll_seconds: float = 1.0,
    ) -> None:
        self.unit_of_work = unit_of_work
        self.promotion = promotion
        self.poll_seconds = poll_seconds
        self.settled = 0

    async def run(self) -> None:
        """Settle due requests until cancelled; a failing round is logged and retried."""
        while True:
            try:
                self.settled += await finish_cancellations(self.unit_of_work(), self.promotion)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("finishing cancellations failed; retrying")
            await asyncio.sleep(self.poll_seconds)
