"""An in-memory database for in-process tests of use cases, and what its outbox holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, select

from services.kit import tables
from services.kit.db import Database
from services.kit.events import Envelope
from services.kit.sql import Statement
from services.kit.uow import UnitOfWork

_OUTBOX = Statement(select(tables.outbox).order_by(tables.outbox.c.seq))


@asynccontextmanager
async def in_memory_database(metadata: MetaData) -> AsyncIterator[Database]:
    """A fresh SQLite database in memory with the kit's and the service's tables."""
    database = Database("sqlite://", tables.metadata, metadata)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def outbox(database: Database) -> list[Envelope]:
    """The events waiting in the outbox, in commit order."""
    async with UnitOfWork(database).reading() as uow:
        rows = await uow.session.rows(_OUTBOX)
    return [Envelope.from_outbox_row(row) for row in rows]


async def outbox_types(database: Database) -> list[str]:
    """The outbox's event names (`Ordered`, `PayCompleted`, …), in commit order."""
    return [envelope.event_type.rpartition(".")[2] for envelope in await outbox(database)]
