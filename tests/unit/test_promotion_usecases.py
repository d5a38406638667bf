"""The promotion's use cases in-process, on an in-memory database: grants and clawbacks in
either order, and the balance they leave."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.kit import errors
from services.kit.db import Database
from services.promotion import usecases
from services.promotion.domain import GrantStatus, PointsRate
from services.promotion.repository import PromotionUnitOfWork, metadata
from tests.support.in_memory import in_memory_database, outbox_types

RATE = PointsRate(10)


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    async with in_memory_database(metadata) as database:
        yield database


async def grant(database: Database, order_id: str = "o-1", amount: int = 1_234_567) -> None:
    async with PromotionUnitOfWork(database) as uow:
        await usecases.grant_points(uow, RATE, order_id, "alice", amount)
        await uow.commit()


async def balance(database: Database) -> tuple[int, list[int]]:
    found = await usecases.point_balance(PromotionUnitOfWork(database), "alice")
    return found.balance, [entry.points for entry in found.entries]


async def test_a_paid_order_earns_ten_percent_rounded_down(database: Database) -> None:
    await grant(database)
    assert await balance(database) == (123_456, [123_456])
    assert await outbox_types(database) == ["PromoCompleted"]


async def test_a_payment_seen_twice_is_granted_once(database: Database) -> None:
    await grant(database)
    await grant(database)
    assert await balance(database) == (123_456, [123_456])
    assert await outbox_types(database) == ["PromoCompleted"]


async def test_a_clawback_reverses_the_grant(database: Database) -> None:
    await grant(database)
    result = await usecases.claw_back_points(PromotionUnitOfWork(database), "o-1", "alice")
    assert result.status is GrantStatus.REVERSED
    assert result.points_reversed == 123_456
    assert await balance(database) == (0, [123_456, -123_456])
    again = await usecases.claw_back_points(PromotionUnitOfWork(database), "o-1", "alice")
    assert again.points_reversed == 123_456
    assert await outbox_types(database) == ["PromoCompleted", "PromoCancelled"]


async def test_a_clawback_before_the_grant_nets_the_later_grant_to_zero(
    database: Database,
) -> None:
    early = await usecases.claw_back_points(PromotionUnitOfWork(database), "o-1", "alice")
    assert (early.status, early.points_reversed, early.paid) == (GrantStatus.REVERSED, 0, False)
    await grant(database)
    assert await balance(database) == (0, [123_456, -123_456])
    assert await outbox_types(database) == ["PromoCancelled", "PromoCompleted", "PromoCancelled"]


async def test_another_customers_points_are_not_clawed_back(database: Database) -> None:
    await grant(database)
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.claw_back_points(PromotionUnitOfWork(database), "o-1", "mallory")
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "POINT_GRANT_OTHER_CUSTOMER"
    assert await balance(database) == (123_456, [123_456])
