"""The promotion's use cases: claw points back (payment calls it) and read a balance.

In-process tests: tests/unit/test_promotion_usecases.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.kit import errors
from services.kit.db import IntegrityError
from services.kit.uow import ConcurrentUpdateError
from services.promotion.domain import LedgerEntry, PointGrant, PointsRate, balance
from services.promotion.repository import PromotionUnitOfWork

log = logging.getLogger(__name__)

#: Tries of a write that lost a race with another writer of the same grant.
WRITE_ATTEMPTS = 3


async def claw_back_points(uow: PromotionUnitOfWork, order_id: str, customer_id: str) -> PointGrant:
    """Reverse the order's points (idempotent); before its payment's grant if need be."""
    for _ in range(WRITE_ATTEMPTS):
        try:
            return await _claw_back(uow, order_id, customer_id)
        except (IntegrityError, ConcurrentUpdateError) as exc:
            # A concurrent clawback or grant for the same order won; look again.
            log.debug("clawback raced; retrying", extra={"error": type(exc).__name__})
    raise errors.unavailable(
        "CONCURRENT_UPDATE",
        f"the points of order {order_id!r} are changing right now; try again",
        retry_after_seconds=0.1,
        metadata={"order_id": order_id},
    )


async def _claw_back(uow: PromotionUnitOfWork, order_id: str, customer_id: str) -> PointGrant:
    async with uow:
        grant = await uow.grants.get(order_id, for_update=True)
        if grant is None:
            # The cancel raced ahead of the payment's event: reverse first, grant later.
            result = PointGrant.reversed_before_payment(order_id, customer_id)
        else:
            if grant.customer_id != customer_id:
                raise errors.failed_precondition(
                    "POINT_GRANT_OTHER_CUSTOMER",
                    f"the points of order {order_id!r} belong to another customer",
                    f"orders/{order_id}",
                    {"order_id": order_id},
                )
            result = grant.clawed_back()
            if result is grant:
                return grant  # reversed already: nothing more to do
        await uow.grants.save(result)
        await uow.commit()
    log.info(
        "points clawed back",
        extra={
            "customer_id": result.customer_id,
            "points_reversed": result.points_reversed,
            "before_grant": not result.paid,
        },
    )
    return result


async def point_grant(uow: PromotionUnitOfWork, order_id: str) -> PointGrant:
    """The order's grant (NOT_FOUND while it has none)."""
    async with uow.reading():
        grant = await uow.grants.get(order_id)
    if grant is None:
        raise errors.not_found("point_grant", order_id)
    return grant


@dataclass(frozen=True)
class PointBalance:
    customer_id: str
    balance: int
    entries: list[LedgerEntry]


async def point_balance(uow: PromotionUnitOfWork, customer_id: str) -> PointBalance:
    async with uow.reading():
        entries = await uow.grants.entries(customer_id)
    return PointBalance(customer_id, balance(entries), entries)


async def grant_points(
    uow: PromotionUnitOfWork, rate: PointsRate, order_id: str, customer_id: str, amount: int
) -> PointGrant | None:
    """Grant a paid order's points inside the caller's unit of work (the consumer's); None if
    its payment was granted already. One grant per order, however often its payment is seen."""
    grant = await uow.grants.get(order_id, for_update=True)
    if grant is None:
        result = PointGrant.for_payment(order_id, customer_id, amount, rate)
    else:
        result = grant.with_payment(customer_id, amount, rate)
        if result is grant:
            return None
    # A concurrent clawback makes this raise; the consumer tries the event again.
    await uow.grants.save(result)
    return result
