"""The kit's database in-process: group commit, savepoints, turns, statements compiled once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from phoneseller.order.v1 import events_pb2
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select

from services.kit import tables
from services.kit.db import Database, IntegrityError
from services.kit.events import new_event
from services.kit.sql import Statement, insert_row
from services.kit.uow import UnitOfWork
from tests.support.announcements import Announcement, AnnouncingUnitOfWork
from tests.support.in_memory import in_memory_database, outbox_types

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("size", Integer, nullable=False),
)
_ADD = insert_row(things)
_NAMES = Statement(select(things.c.name).order_by(things.c.name))
_SIZES_IN = Statement(
    select(things.c.size)
    .where(things.c.name.in_(bindparam("names", expanding=True)))
    .order_by(things.c.size)
)


def ordered(order_id: str) -> events_pb2.Ordered:
    return new_event(
        events_pb2.Ordered,
        order_id=order_id,
        customer_id="c",
        item="phone",
        quantity=1,
        unit_price=1,
        amount=1,
    )


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    async with in_memory_database(metadata) as database:
        yield database


async def names(database: Database) -> list[str]:
    async with UnitOfWork(database).reading() as uow:
        return [row["name"] for row in await uow.session.rows(_NAMES)]


async def add(database: Database, name: str, *, fail: bool = False) -> None:
    async with AnnouncingUnitOfWork(database) as uow:
        await uow.session.execute(_ADD, name=name, size=len(name))
        await uow.announcements.save(Announcement(ordered(name)))
        if fail:
            raise RuntimeError("this unit of work fails after writing")
        await uow.commit()


async def test_concurrent_units_of_work_commit_together_and_fail_alone(
    database: Database,
) -> None:
    outcomes = await asyncio.gather(
        *(add(database, f"t{i}", fail=i % 3 == 0) for i in range(30)),
        add(database, "t1"),  # a duplicate key: only this one fails
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert sum(isinstance(o, RuntimeError) for o in failed) == 10
    assert sum(isinstance(o, IntegrityError) for o in failed) == 1
    kept = sorted(f"t{i}" for i in range(30) if i % 3)
    assert await names(database) == kept
    assert len(await outbox_types(database)) == len(kept), "an event iff its change"


async def test_a_unit_of_work_without_commit_changes_nothing(database: Database) -> None:
    async with AnnouncingUnitOfWork(database) as uow:
        await uow.session.execute(_ADD, name="draft", size=1)
        await uow.announcements.save(Announcement(ordered("draft")))
    assert await names(database) == []
    assert await outbox_types(database) == []


async def test_in_lists_are_compiled_once_per_length(database: Database) -> None:
    for name in ("a", "bb", "ccc"):
        await add(database, name)
    async with UnitOfWork(database).reading() as uow:
        assert [r["size"] for r in await uow.session.rows(_SIZES_IN, names=["ccc", "a"])] == [1, 3]
        assert [r["size"] for r in await uow.session.rows(_SIZES_IN, names=["bb"])] == [2]
        assert await uow.session.rows(_SIZES_IN, names=["nope", "zz"]) == []


async def test_a_waiter_cancelled_as_the_turn_reaches_it_does_not_strand_the_group(
    database: Database,
) -> None:
    """The first unit of work hands the writer to the next and waits for the group's commit;
    the next is cancelled before it runs. The commit must still happen."""
    entered, go_on = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with AnnouncingUnitOfWork(database) as uow:
            entered.set()
            await go_on.wait()  # holds the writer's turn (only a test's body waits like this)
            await uow.session.execute(_ADD, name="first", size=1)
            await uow.commit()

    async def second() -> None:
        async with AnnouncingUnitOfWork(database) as uow:
            await uow.commit()

    holder = asyncio.create_task(first())
    await entered.wait()
    waiter = asyncio.create_task(second())
    await asyncio.sleep(0)  # the second now waits for the turn
    go_on.set()
    await asyncio.sleep(0)  # the first hands the turn over and waits for the commit
    waiter.cancel()
    await asyncio.wait_for(holder, timeout=5)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await names(database) == ["first"]


async def test_a_file_database_is_durable_across_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'things.db'}"
    database = Database(url, tables.metadata, metadata)
    await database.open()
    await asyncio.gather(*(add(database, f"d{i}") for i in range(20)))
    await database.close()
    again = Database(url, tables.metadata, metadata)
    await again.open()
    try:
        assert await names(again) == sorted(f"d{i}" for i in range(20))
    finally:
        await again.close()
