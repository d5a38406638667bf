"""The service's database: SQLite behind one group-committing writer, or PostgreSQL.

SQLite is the default (WAL, synchronous=FULL: a committed order survives a power cut); any
PostgreSQL URL works for services that scale out. The schema is created at start-up from the
SQLAlchemy tables (`create_all`): each service owns its tables, and additive changes need no
migration tool yet (docs/architecture.md).

Both run the statements of `services.kit.sql` on the driver itself — `sqlite3` and `asyncpg`
— because SQLAlchemy's async layer cost ten times what the drivers do (docs/architecture.md,
"Performance"). How each keeps a unit of work cheap:

- SQLite: one connection writes, owned by this process. Units of work take turns on it, each
  inside a SAVEPOINT of one open transaction, and the transaction commits once for all of
  them when nobody else is waiting (group commit): many units of work share one fsync, with
  the same durability as one commit each. The statements run on the event loop's thread (a
  statement costs microseconds; a thread hop per statement was what made aiosqlite slow); only
  the COMMIT, which waits for the disk, runs on a thread of its own. Readers use a second
  connection and see only committed data. Other processes on the same file (replicas) take the
  write lock in turn: `BEGIN IMMEDIATE` is retried every millisecond instead of in SQLite's
  busy handler, which sleeps in growing steps (up to 100 ms) and made the multi-second tails.
- PostgreSQL: a pool of asyncpg connections with prepared statements, one transaction per
  unit of work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import MetaData
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from services.kit import errors
from services.kit.sql import DIALECTS, Compiled, DialectName, Row, Statement

log = logging.getLogger(__name__)


class DatabaseError(Exception):
    """A failure of the database, not of the caller's request."""


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached or locked now; trying again later may work."""


class IntegrityError(DatabaseError):
    """A constraint refused the statement (e.g. a duplicate key); nothing was written."""


# --------------------------------------------------------------------------------------------
# Sessions: how a unit of work runs statements


#: Called with the SQL of every statement a session runs (tests count statements with it).
StatementObserver = Callable[[str], None]


class Session(ABC):
    """Runs compiled statements inside one transaction."""

    dialect: DialectName
    observer: StatementObserver | None = None

    @abstractmethod
    async def rows(self, statement: Statement, **values: Any) -> list[Row]:
        """All rows the statement returns."""

    async def row(self, statement: Statement, **values: Any) -> Row | None:
        """The first row, or None."""
        rows = await self.rows(statement, **values)
        return rows[0] if rows else None

    async def scalar(self, statement: Statement, **values: Any) -> Any:
        """The first column of the first row, or None."""
        row = await self.row(statement, **values)
        return next(iter(row.values())) if row else None

    @abstractmethod
    async def execute(self, statement: Statement, **values: Any) -> int:
        """Run a statement without rows; returns how many rows it changed."""

    @abstractmethod
    async def execute_many(self, statement: Statement, values: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement once per set of values (one round trip where the driver can)."""

    def _prepare(
        self, statement: Statement, values: Mapping[str, Any]
    ) -> tuple[Compiled, list[Any]]:
        """The statement's compiled form and the driver's parameters for these values."""
        form = statement.for_dialect(self.dialect, values)
        if self.observer:
            self.observer(form.sql)
        return form, form.parameters(statement.flat(self.dialect, values))

    def _prepare_many(
        self, statement: Statement, values: Sequence[Mapping[str, Any]]
    ) -> tuple[Compiled, list[list[Any]]]:
        form = statement.for_dialect(self.dialect, values[0])
        if self.observer:
            self.observer(form.sql)
        return form, [form.parameters(v) for v in values]


class _SqliteSession(Session):
    dialect: DialectName = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def rows(self, statement: Statement, **values: Any) -> list[Row]:
        form, parameters = self._prepare(statement, values)
        with _sqlite_errors():
            cursor = self.connection.execute(form.sql, parameters)
            rows = cursor.fetchall()
        names = [d[0] for d in cursor.description or ()] if form.columns is None else ()
        return [form.row(row, names) for row in rows]

    async def execute(self, statement: Statement, **values: Any) -> int:
        form, parameters = self._prepare(statement, values)
        with _sqlite_errors():
            return self.connection.execute(form.sql, parameters).rowcount

    async def execute_many(self, statement: Statement, values: Sequence[Mapping[str, Any]]) -> None:
        if values:
            form, parameters = self._prepare_many(statement, values)
            with _sqlite_errors():
                self.connection.executemany(form.sql, parameters)


class _PostgresSession(Session):
    dialect: DialectName = "postgresql"

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def rows(self, statement: Statement, **values: Any) -> list[Row]:
        form, parameters = self._prepare(statement, values)
        with _postgres_errors():
            records = await self.connection.fetch(form.sql, *parameters)
        if form.columns is None:
            return [dict(record.items()) for record in records]
        return [form.row(tuple(record)) for record in records]

    async def execute(self, statement: Statement, **values: Any) -> int:
        form, parameters = self._prepare(statement, values)
        with _postgres_errors():
            status = await self.connection.execute(form.sql, *parameters)
        # "UPDATE 1", "DELETE 3", "INSERT 0 1": the last word is the row count.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def execute_many(self, statement: Statement, values: Sequence[Mapping[str, Any]]) -> None:
        if values:
            form, parameters = self._prepare_many(statement, values)
            with _postgres_errors():
                await self.connection.executemany(form.sql, parameters)


@contextlib.contextmanager
def _sqlite_errors() -> Any:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        raise DatabaseUnavailableError(str(exc)) from exc


#: asyncpg's failures that mean "the server is not there (or not usable) now".
_POSTGRES_UNREACHABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def _postgres_errors() -> Any:
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(str(exc)) from exc
    except _POSTGRES_UNREACHABLE as exc:
        raise DatabaseUnavailableError(str(exc) or type(exc).__name__) from exc


# --------------------------------------------------------------------------------------------
# Transactions


class Transaction(ABC):
    """One unit of work's transaction: `begin`, statements through `session`, `end`."""

    session: Session
    observer: StatementObserver | None = None

    @abstractmethod
    async def begin(self) -> None: ...

    @abstractmethod
    async def end(self, *, commit: bool) -> None:
        """Commit (and return once it is durable) or roll back; always releases the session."""

    def wrote_events(self) -> None:
        """Note that this transaction added outbox rows: the relay wakes once it is durable."""
        self.events_written = True

    events_written: bool = False


class Database:
    """One service's database: opened once at start-up, then shared by all requests."""

    def __init__(self, url: str, *metadata: MetaData, lock_timeout_seconds: float = 30.0) -> None:
        self.url = url
        self.metadata = metadata
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            self._backend: _Backend = _SqliteBackend(parsed, lock_timeout_seconds)
        elif backend == "postgresql":
            self._backend = _PostgresBackend(parsed)
        else:
            raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
        self.is_open = False
        # Set after each commit that wrote events, so the outbox relay wakes at once.
        self.outbox_written = asyncio.Event()
        #: Sees every statement of every session (None: nobody looks, and it costs nothing).
        self.observer: StatementObserver | None = None
        #: This process among those writing the same database (outbox rows say who wrote them).
        self.writer_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"

    @property
    def backend(self) -> DialectName:
        return self._backend.dialect

    async def open(self, retry_interval: float = 1.0) -> None:
        """Create missing tables, retrying until the database answers."""
        while True:
            try:
                await self._backend.open(self.metadata)
                break
            except Exception as exc:  # whatever the cause, the database is not there yet
                log.warning("database not ready, retrying", extra={"error": str(exc)[:500]})
                await self._backend.close()
                await asyncio.sleep(retry_interval)
        self.is_open = True
        log.info("database open", extra={"backend": self.backend})

    def transaction(self, *, read_only: bool = False) -> Transaction:
        if not self.is_open:
            raise errors.unavailable("STARTING", "the service is starting; try again shortly")
        transaction = self._backend.transaction(read_only, self.outbox_written)
        transaction.observer = self.observer
        return transaction

    async def close(self) -> None:
        self.is_open = False
        await self._backend.close()


class _Backend(ABC):
    dialect: DialectName

    @abstractmethod
    async def open(self, metadata: Sequence[MetaData]) -> None: ...

    @abstractmethod
    def transaction(self, read_only: bool, outbox_written: asyncio.Event) -> Transaction: ...

    @abstractmethod
    async def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# SQLite: one writer, group commit


#: A group commits when nobody waits to join it, or at the latest after this many members.
MAX_GROUP_MEMBERS = 256


class _Turn:
    """A FIFO lock whose holder can see whether anyone waits, and hand over directly.

    `on_abandoned` runs when a turn handed to a waiter finds it cancelled: whoever takes over
    from there (for the writer, `_leave`: the next waiter, or the group's commit) must, or the
    group's members would wait for a commit that never comes.
    """

    def __init__(self, on_abandoned: Callable[[], None] | None = None) -> None:
        self._held = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._on_abandoned = on_abandoned or self.release

    @property
    def waiting(self) -> bool:
        return any(not w.done() for w in self._waiters)

    async def acquire(self) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._on_abandoned()  # handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the turn to the next waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._held = False


@dataclass
class _Group:
    """The units of work sharing one transaction, and the future of its commit."""

    durable: asyncio.Future[None]
    members: int = 0
    events_written: bool = False
    turns: int = field(default=0)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class _SqliteBackend(_Backend):
    dialect: DialectName = "sqlite"

    def __init__(self, url: URL, lock_timeout_seconds: float) -> None:
        database = url.database or ":memory:"
        self.in_memory = database == ":memory:"
        self.path = database
        self.lock_timeout_seconds = lock_timeout_seconds
        self.writer: sqlite3.Connection | None = None
        self.reader: sqlite3.Connection | None = None
        self._turn = _Turn(on_abandoned=self._leave)
        self._read_turn = _Turn()
        self._group: _Group | None = None
        self._commits: ThreadPoolExecutor | None = None
        self._committing: set[asyncio.Task[None]] = set()

    def _connect(self) -> sqlite3.Connection:
        # Transaction control is ours (isolation_level=None). No busy timeout: waiting for
        # another process's lock happens in `_begin`, without blocking the event loop.
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0
        )
        if not self.in_memory:
            connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    async def open(self, metadata: Sequence[MetaData]) -> None:
        if not self.in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.writer = self._connect()
        await self._create_tables(metadata)
        self.reader = self.writer if self.in_memory else self._connect()
        if not self.in_memory:
            self.reader.execute("PRAGMA query_only=ON")
        self._commits = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")

    async def _create_tables(self, metadata: Sequence[MetaData]) -> None:
        """SQLAlchemy's DDL for the tables, run with IF NOT EXISTS (replicas starting together
        create them one after the other, under the write lock)."""
        writer = self.writer
        assert writer is not None
        dialect = DIALECTS["sqlite"]
        statements: list[str] = []
        for tables in metadata:
            for table in tables.sorted_tables:
                ddl: list[ExecutableDDLElement] = [CreateTable(table, if_not_exists=True)]
                ddl += [CreateIndex(index, if_not_exists=True) for index in table.indexes]
                statements += [str(element.compile(dialect=dialect)) for element in ddl]
        await self._begin()
        try:
            for statement in statements:
                writer.execute(statement)
            writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise

    def transaction(self, read_only: bool, outbox_written: asyncio.Event) -> Transaction:
        if read_only and not self.in_memory:
            return _SqliteReadTransaction(self)
        return _SqliteWriteTransaction(self, outbox_written)

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write lock a millisecond at a time."""
        writer = self.writer
        assert writer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_timeout_seconds
        while True:
            try:
                writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise DatabaseUnavailableError(str(exc)) from exc
                if loop.time() > deadline:
                    raise DatabaseUnavailableError(
                        f"the database stayed locked for {self.lock_timeout_seconds:g} s"
                    ) from exc
            await asyncio.sleep(0.001)

    async def join(self) -> _Group:
        """Take the writer's turn, inside the open group's transaction (opening one)."""
        await self._turn.acquire()
        try:
            if self._group is None:
                await self._begin()
                durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                # Members that went away never look at a failed commit; this one always does.
                durable.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._group = _Group(durable)
            group = self._group
            group.turns += 1
            assert self.writer is not None
            self.writer.execute("SAVEPOINT unit_of_work")
        except BaseException:
            self._leave()
            raise
        return group

    def leave(self, group: _Group, *, commit: bool) -> None:
        """End a member's savepoint and pass the turn on (or commit the group)."""
        writer = self.writer
        assert writer is not None
        try:
            if commit:
                writer.execute("RELEASE unit_of_work")
                group.members += 1
            else:
                writer.execute("ROLLBACK TO unit_of_work")
                writer.execute("RELEASE unit_of_work")
        finally:
            self._leave()

    def _leave(self) -> None:
        group = self._group
        if group is not None and self._turn.waiting and group.turns < MAX_GROUP_MEMBERS:
            self._turn.release()  # the next unit of work joins this transaction
            return
        self._group = None
        if group is None:
            self._turn.release()
            return
        # Nobody else is ready to join: commit. The turn stays taken until the commit is done.
        task = asyncio.get_running_loop().create_task(self._commit(group))
        self._committing.add(task)
        task.add_done_callback(self._committing.discard)

    async def _commit(self, group: _Group) -> None:
        writer = self.writer
        assert writer is not None and self._commits is not None
        try:
            if group.members and self.in_memory:
                writer.execute("COMMIT")  # no disk to wait for
            elif group.members:
                done = asyncio.get_running_loop().run_in_executor(
                    self._commits, writer.execute, "COMMIT"
                )
                # The COMMIT runs to its end whatever happens to us: the connection must not
                # be used by anyone else until it has.
                while True:
                    try:
                        await asyncio.shield(done)
                        break
                    except asyncio.CancelledError:
                        if done.done():
                            raise
            else:
                writer.execute("ROLLBACK")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
            if not group.durable.done():
                group.durable.set_exception(
                    DatabaseUnavailableError(f"commit failed: {exc}")
                    if not isinstance(exc, DatabaseError)
                    else exc
                )
            if not isinstance(exc, Exception):
                raise
        else:
            group.durable.set_result(None)
        finally:
            self._turn.release()

    async def close(self) -> None:
        if self._committing:
            await asyncio.gather(*self._committing, return_exceptions=True)
        for connection in {id(c): c for c in (self.reader, self.writer) if c}.values():
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        self.reader = self.writer = None
        if self._commits is not None:
            self._commits.shutdown(wait=True)
            self._commits = None


class _SqliteWriteTransaction(Transaction):
    def __init__(self, backend: _SqliteBackend, outbox_written: asyncio.Event) -> None:
        self.backend = backend
        self.outbox_written = outbox_written
        self._group: _Group | None = None

    async def begin(self) -> None:
        self._group = await self.backend.join()
        assert self.backend.writer is not None
        self.session = _SqliteSession(self.backend.writer)
        self.session.observer = self.observer

    async def end(self, *, commit: bool) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        if commit and self.events_written:
            group.events_written = True
        self.backend.leave(group, commit=commit)
        if commit:
            # Shielded: a caller that goes away must not cancel the other members' commit.
            await asyncio.shield(group.durable)
            if group.events_written:
                self.outbox_written.set()


class _SqliteReadTransaction(Transaction):
    def __init__(self, backend: _SqliteBackend) -> None:
        self.backend = backend

    async def begin(self) -> None:
        await self.backend._read_turn.acquire()
        reader = self.backend.reader
        assert reader is not None
        try:
            reader.execute("BEGIN")  # deferred: a snapshot of what is committed
        except BaseException:
            self.backend._read_turn.release()
            raise
        self.session = _SqliteSession(reader)
        self.session.observer = self.observer

    async def end(self, *, commit: bool) -> None:
        try:
            reader = self.backend.reader
            if reader is not None and reader.in_transaction:
                reader.execute("COMMIT")
        finally:
            self.backend._read_turn.release()


# --------------------------------------------------------------------------------------------
# PostgreSQL: a pool of asyncpg connections


class _PostgresBackend(_Backend):
    dialect: DialectName = "postgresql"

    def __init__(self, url: URL) -> None:
        self.url = url
        self.pool: asyncpg.Pool | None = None

    async def open(self, metadata: Sequence[MetaData]) -> None:
        engine = create_async_engine(self.url.set(drivername="postgresql+asyncpg"))
        try:
            async with engine.begin() as connection:
                for tables in metadata:
                    await connection.run_sync(tables.create_all)
        finally:
            await engine.dispose()
        self.pool = await asyncpg.create_pool(
            self.url.set(drivername="postgresql").render_as_string(hide_password=False),
            min_size=1,
            max_size=10,
            # A statement that hangs (a cut network) fails instead of holding its caller.
            command_timeout=10,
            timeout=5,
        )

    def transaction(self, read_only: bool, outbox_written: asyncio.Event) -> Transaction:
        assert self.pool is not None
        return _PostgresTransaction(self.pool, read_only, outbox_written)

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (TimeoutError, *_POSTGRES_UNREACHABLE):
                pool.terminate()


class _PostgresTransaction(Transaction):
    def __init__(self, pool: asyncpg.Pool, read_only: bool, outbox_written: asyncio.Event) -> None:
        self.pool = pool
        self.read_only = read_only
        self.outbox_written = outbox_written
        self._connection: asyncpg.Connection | None = None
        self._transaction: Any = None

    async def begin(self) -> None:
        with _postgres_errors():
            connection = await self.pool.acquire()
            # A reader runs its statements as they come, each on the latest committed data:
            # BEGIN and COMMIT would be two more round trips for every read. (The one read of
            # two statements, the customer view's history, may then show an event in a
            # timeline a moment before the order's row reflects it: the view is eventually
            # consistent anyway.)
            transaction = None
            if not self.read_only:
                try:
                    transaction = connection.transaction()
                    await transaction.start()
                except BaseException:
                    await self.pool.release(connection)
                    raise
        self._connection, self._transaction = connection, transaction
        self.session = _PostgresSession(connection)
        self.session.observer = self.observer

    async def end(self, *, commit: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            with _postgres_errors():
                if self._transaction is None:
                    pass  # a reader: nothing to end
                elif commit:
                    await self._transaction.commit()
                else:
                    await self._transaction.rollback()
        except DatabaseError:
            if commit:
                raise
        finally:
            await self.pool.release(connection)
        if commit and self.events_written:
            self.outbox_written.set()


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailableError",
    "IntegrityError",
    "Session",
    "Transaction",
    "describe",
    "sqlite_path",
]
