"""The service's database: engine, schema creation, and the unit of work.

SQLite is the default (WAL, synchronous=FULL: a committed order survives a power cut); any
SQLAlchemy async URL works, e.g. PostgreSQL through asyncpg for services that scale out. The
schema is created at start-up from the SQLAlchemy tables (`create_all`): each service owns its
tables, and additive changes need no migration tool yet (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from google.protobuf.message import Message
from sqlalchemy import MetaData, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.kit import errors
from services.kit.events import envelope_for
from services.kit.outbox import insert_outbox_rows
from services.kit.tables import READ_ONLY

log = logging.getLogger(__name__)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL, FULL sync and write-locking transactions."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN is ours to emit (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes can
        # fail with SQLITE_BUSY instead of waiting when replicas share the file.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A cancelled call (client gone, deadline, shutdown) interrupts us while aiosqlite's
        # thread still runs the statement. SQLAlchemy would then hard-close the connection
        # without closing its cursor; SQLite keeps such a connection, and its write lock, until
        # the cursor is garbage-collected, and every writer of the file (all replicas) waits.
        # The connection is fine (its thread runs the statement to the end), so keep it: the
        # unit of work's ROLLBACK follows that statement and releases the lock at once.
        if isinstance(context.original_exception, asyncio.CancelledError):
            context.is_disconnect = False

    return engine


class Database:
    """One service's database: opened once at start-up, then shared by all requests."""

    def __init__(self, url: str, *metadata: MetaData) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.metadata = metadata
        self.is_open = False
        # Set after each commit that wrote events, so the outbox relay wakes at once.
        self.outbox_written = asyncio.Event()

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    async def open(self, retry_interval: float = 1.0) -> None:
        """Create missing tables, retrying until the database answers."""
        database_file = make_url(self.url).database
        while True:
            try:
                if self.backend == "sqlite" and database_file and database_file != ":memory:":
                    Path(database_file).parent.mkdir(parents=True, exist_ok=True)
                async with self.engine.begin() as connection:
                    for metadata in self.metadata:
                        await connection.run_sync(metadata.create_all)
                break
            except Exception as exc:  # whatever the cause, the database is not there yet
                log.warning("database not ready, retrying", extra={"error": str(exc)})
                await asyncio.sleep(retry_interval)
        self.is_open = True
        log.info("database open", extra={"backend": self.backend})

    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork:
        if not self.is_open:
            raise errors.unavailable("STARTING", "the service is starting; try again shortly")
        return UnitOfWork(self, read_only=read_only)

    async def close(self) -> None:
        await self.engine.dispose()


class UnitOfWork:
    """One transaction: state changes plus the events they cause, committed together.

    Rolls back unless `commit()` was called. Events added with `emit` are written to the outbox
    in the same transaction, so an event exists if and only if its change does.
    """

    def __init__(self, database: Database, *, read_only: bool = False) -> None:
        self.database = database
        self.read_only = read_only
        self._events: list[Message] = []
        self._connection: AsyncConnection | None = None
        self.committed = False

    @property
    def connection(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("unit of work used outside its `async with` block")
        return self._connection

    async def __aenter__(self) -> Self:
        connection = await self.database.engine.connect()
        if self.read_only:
            connection = await connection.execution_options(**{READ_ONLY: True})
        await connection.begin()
        self._connection = connection
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if not self.committed:
                await connection.rollback()
        finally:
            await connection.close()

    def emit(self, *events: Message) -> None:
        """Record events to be published once this unit of work commits."""
        self._events.extend(events)

    async def commit(self) -> None:
        if self._events:
            await insert_outbox_rows(self.connection, [envelope_for(e) for e in self._events])
        await self.connection.commit()
        self.committed = True
        if self._events:
            self.database.outbox_written.set()
        self._events.clear()
