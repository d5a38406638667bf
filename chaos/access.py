"""What the chaos run reaches besides the gateway: the services' databases, read-only, and
NATS. One function sets up each kind of connection, so that credentials (a PostgreSQL role
for auditors, NATS user credentials) go in one place when the stack asks for them.

Statements are the services' own SQLAlchemy tables, compiled here with their values inlined:
the column names stay those of services/*/repository.py and services/kit/tables.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import nats
from nats.aio.client import Client as Nats
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select

from stack.nats import ADMIN
from stack.supervisor import LocalStack

Row = dict[str, Any]


class ReadOnlyDatabase(Protocol):
    async def rows(self, statement: Select[Any]) -> list[Row]: ...

    async def close(self) -> None: ...


def compiled(statement: Select[Any], dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


class SqliteReader:
    """A SQLite file opened read-only (`mode=ro`) for each query, on a thread.

    A fresh connection per query sees the latest commit of every replica's writer (WAL), and
    one that is never kept open cannot hold a snapshot or a lock the services would meet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dialect = sqlite.dialect()

    async def rows(self, statement: Select[Any]) -> list[Row]:
        return await asyncio.to_thread(self._rows, compiled(statement, self._dialect))

    def _rows(self, sql: str) -> list[Row]:
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(sql)]
        finally:
            connection.close()

    async def close(self) -> None:
        return None


class PostgresReader:
    """One PostgreSQL connection whose transactions are read-only, reopened after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._dialect: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        self._connection: Any = None

    async def rows(self, statement: Select[Any]) -> list[Row]:
        sql = compiled(statement, self._dialect)
        if self._connection is None or self._connection.is_closed():
            connect: Any = asyncpg.connect  # untyped
            self._connection = await connect(
                self.url,
                timeout=5,
                server_settings={"default_transaction_read_only": "on"},
            )
        try:
            return [dict(row) for row in await self._connection.fetch(sql, timeout=30)]
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            await connection.close()


def open_read_only(url: str) -> ReadOnlyDatabase:
    """A reader for a service's database URL (`sqlite:///<file>` or `postgresql://…`)."""
    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):
        return SqliteReader(Path(rest.removeprefix("/")).resolve() if rest else Path())
    if scheme.startswith("postgresql"):
        return PostgresReader(f"postgresql://{rest}")  # asyncpg wants no `+asyncpg`
    raise ValueError(f"not a database URL the services accept: {url!r}")


@dataclass(frozen=True)
class NatsAccess:
    """Where NATS is, and the nkey seed of a user who may do everything ("": none needed)."""

    url: str
    nkey_file: str = ""


def nats_access(stack: LocalStack) -> NatsAccess:
    """The stack's admin user (stack/nats.py: a user per service, and admin for tooling)."""
    return NatsAccess(stack.nats_url, str(stack.nats_auth.seed_file(ADMIN)))


async def _ignore(error: Exception) -> None:
    """nats-py prints every connection error with its traceback; the caller handles them."""


async def connect_nats(access: NatsAccess) -> Nats:
    """A NATS connection for the run (poison events, consumer state); gives up quickly."""
    credentials: dict[str, Any] = {"nkeys_seed": access.nkey_file} if access.nkey_file else {}
    return await nats.connect(
        access.url,
        connect_timeout=2,
        max_reconnect_attempts=0,
        allow_reconnect=False,
        name="chaos",
        error_cb=_ignore,
        **credentials,
    )
