"""The customer view's tables on a real SQLite database: batches, copies, statement counts."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf.message import Message
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from services.customer.domain import (
    EVENT_TYPES,
    CustomerHistory,
    OrderStatus,
    fact_from_event,
)
from services.customer.handlers import handle
from services.customer.repository import CustomerUnitOfWork, metadata
from services.kit import tables
from services.kit.bus import EventBus
from services.kit.consumer import EventConsumer
from services.kit.db import Database
from services.kit.events import envelope_for
from services.kit.sql import Statement
from tests.support.saga_events import T0, expected_history, saga
from tests.support.waiting import eventually

#: The PostgreSQL server of the project's machines (DESIGN §6); tests skip it if absent.
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    admin = create_async_engine(f"{POSTGRES}/test", isolation_level="AUTOCOMMIT")
    name = f"customer_view_test_{uuid.uuid4().hex[:12]}"
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError) as exc:
        await admin.dispose()
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'customer.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        db = Database(url, tables.metadata, metadata)
        await db.open()
        stack.push_async_callback(db.close)
        yield db


@contextmanager
def counting_statements(db: Database) -> Iterator[list[str]]:
    """The statements the database's sessions run inside the block."""
    statements: list[str] = []
    db.observer = statements.append
    try:
        yield statements
    finally:
        db.observer = None


async def apply(db: Database, events: list[Message]) -> int:
    async with CustomerUnitOfWork(db) as uow:
        new = await uow.views.apply([fact_from_event(e) for e in events])
        await uow.commit()
    return new


async def read(db: Database, customer_id: str) -> CustomerHistory:
    async with CustomerUnitOfWork(db).reading() as uow:
        return await uow.views.history(customer_id)


async def test_any_batching_order_and_copies_store_the_pure_projection(database: Database) -> None:
    rng = random.Random(7)
    events = [
        *saga("happy", customer_id="alice"),
        *saga("cancel", customer_id="alice", start=T0 + timedelta(hours=1)),
        *saga("decline", customer_id="alice", start=T0 + timedelta(hours=2)),
        *saga("happy", customer_id="bob"),
    ]
    delivered = events + rng.choices(events, k=10)
    rng.shuffle(delivered)
    cuts = sorted(rng.sample(range(1, len(delivered)), 6))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    applied = [await apply(database, batch) for batch in batches]

    assert sum(applied) == len(events)
    for customer in ("alice", "bob"):
        assert await read(database, customer) == expected_history(customer, events)
    alice = await read(database, "alice")
    assert [o.status for o in alice.orders] == [
        OrderStatus.PAYMENT_DECLINED,
        OrderStatus.CANCELLED,
        OrderStatus.SHIPPED,
    ]
    assert alice.point_balance == 120_000
    async with CustomerUnitOfWork(database).reading() as uow:
        for order in alice.orders:
            assert await uow.views.project_order(order.order_id) == order


async def test_applying_again_changes_nothing(database: Database) -> None:
    events = saga("happy", customer_id="carol")
    assert await apply(database, events) == 4
    before = await read(database, "carol")
    assert await apply(database, events) == 0
    assert await apply(database, [events[2], events[2]]) == 0
    assert await read(database, "carol") == before
    assert before.orders[0].points_granted == 120_000


async def test_an_unknown_customer_has_an_empty_history(database: Database) -> None:
    await apply(database, saga("happy", customer_id="dave"))
    empty = await read(database, "nobody")
    assert empty == CustomerHistory("nobody", ())
    assert empty.point_balance == 0


async def test_a_batch_costs_a_fixed_number_of_statements(database: Database) -> None:
    events = [e for i in range(43) for e in saga("cancel", customer_id=f"c{i % 5}")][:256]
    assert len(events) == 256
    with counting_statements(database) as statements:
        await apply(database, events[:200])
    assert len(statements) == 4, statements  # lock views, read facts, insert facts, insert views
    with counting_statements(database) as statements:
        await apply(database, events[150:])  # 50 copies, 56 new, some orders seen before
    assert len(statements) == 5, statements  # ... and update the views seen before


class FakeMetadata:
    class sequence:  # noqa: N801 - shaped like nats-py's Msg.Metadata
        stream = 1

    num_delivered = 1


class FakeMsg:
    """What the kit's consumer reads of a NATS message on its batch path."""

    def __init__(self, source: Message) -> None:
        envelope = envelope_for(source)
        self.subject = envelope.subject
        self.headers = envelope.headers()
        self.data = envelope.payload
        self.acked = False
        self.metadata = FakeMetadata()

    async def ack(self) -> None:
        self.acked = True


async def test_the_service_consumer_projects_a_batch_in_one_go(database: Database) -> None:
    events = [e for i in range(50) for e in saga("happy", customer_id=f"d{i % 7}")][:200]
    delivered = [*events, *events[:56]]  # copies in the same batch
    random.Random(3).shuffle(delivered)
    consumer = EventConsumer(
        "customer",
        EventBus("nats://unused"),
        EVENT_TYPES,
        handle,
        lambda: CustomerUnitOfWork(database),
    )
    messages = [FakeMsg(e) for e in delivered]
    with counting_statements(database) as statements:
        await consumer.handle_batch(messages)  # type: ignore[arg-type]
    # inbox check + lock views, read facts, insert facts, insert views + inbox rows
    assert len(statements) == 6, statements
    assert all(m.acked for m in messages)
    assert consumer.handled == len(messages)
    for i in range(7):
        assert await read(database, f"d{i}") == expected_history(f"d{i}", events)
    async with CustomerUnitOfWork(database).reading() as uow:
        inbox_rows = await uow.session.scalar(
            Statement(select(func.count()).select_from(tables.inbox))
        )
    assert inbox_rows == 200


async def test_concurrent_batches_about_one_order_both_count_on_postgresql() -> None:
    """Two replicas' batches about one order: the second waits and projects both."""
    async with postgres_database() as url:
        db = Database(url, tables.metadata, metadata)
        await db.open()
        try:
            events = saga("cancel", customer_id="fay")
            await apply(db, events[:1])
            async with CustomerUnitOfWork(db) as first:
                await first.views.apply([fact_from_event(e) for e in events[1:3]])
                second = asyncio.create_task(apply(db, events[3:]))
                waiting_locks = Statement(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))

                async def second_is_waiting() -> bool:
                    async with CustomerUnitOfWork(db).reading() as probe:
                        return bool(await probe.session.scalar(waiting_locks))

                await eventually(second_is_waiting, timeout=10, message="the second batch waits")
                await first.commit()
            assert await second == 3
            assert await read(db, "fay") == expected_history("fay", events)
        finally:
            await db.close()
