"""What the stack keeps as it runs: database sizes, the JetStream store, and the kit's tables.

A soak is about what grows: the databases (SQLite files with their -wal, or
pg_database_size), JetStream's store folder, and the rows of each service's outbox, inbox and
dead_letters. Tables are looked up by name and a missing one reads as None, so the probe keeps
working while the kit's schema changes under it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]

KIT_TABLES = ("outbox", "inbox", "dead_letters")
#: An extra figure beside the row counts: outbox rows the relay has not published yet.
UNPUBLISHED = "outbox_unpublished"
UNPUBLISHED_QUERY = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


@dataclass(frozen=True)
class DatabaseFootprint:
    service: str
    bytes: int
    #: Rows per kit table (None: no such table), plus `outbox_unpublished`.
    rows: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Footprint:
    databases: list[DatabaseFootprint]
    jetstream_bytes: int

    @property
    def database_bytes(self) -> int:
        return sum(database.bytes for database in self.databases)

    def rows(self, table: str) -> int:
        """The rows of one kit table over every service."""
        return sum(database.rows.get(table) or 0 for database in self.databases)

    def as_json(self) -> dict[str, object]:
        return {
            "jetstream_bytes": self.jetstream_bytes,
            "database_bytes": self.database_bytes,
            "databases": {
                database.service: {"bytes": database.bytes, "rows": database.rows}
                for database in self.databases
            },
        }


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`; files that vanish while we look count as 0."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _sqlite_rows(path: Path) -> dict[str, int | None]:
    # Read-only, so that looking can never write; WAL lets us read beside the writers.
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        present = {
            name for (name,) in connection.execute("SELECT name FROM sqlite_master")
        }  # one query instead of one per table
        rows: dict[str, int | None] = {}
        for table in KIT_TABLES:
            rows[table] = (
                connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                if table in present
                else None
            )
        rows[UNPUBLISHED] = _unpublished(connection) if "outbox" in present else None
        return rows
    finally:
        connection.close()


def _unpublished(connection: sqlite3.Connection) -> int | None:
    try:
        count: int = connection.execute(UNPUBLISHED_QUERY).fetchone()[0]
        return count
    except sqlite3.Error:  # the outbox no longer has published_at
        return None


def _sqlite_footprint(path: Path) -> DatabaseFootprint:
    size = sum(
        candidate.stat().st_size
        for candidate in (path, path.with_name(path.name + "-wal"))
        if candidate.exists()
    )
    try:
        rows = _sqlite_rows(path)
    except sqlite3.Error:
        rows = dict.fromkeys((*KIT_TABLES, UNPUBLISHED))
    return DatabaseFootprint(path.stem, size, rows)


async def sqlite_footprint(run_dir: Path) -> Footprint:
    """Every `<service>.db` under the run folder's data/, and its JetStream store."""
    paths = sorted((run_dir / "data").glob("*.db"))
    databases = await asyncio.to_thread(lambda: [_sqlite_footprint(path) for path in paths])
    return Footprint(databases, await asyncio.to_thread(folder_bytes, run_dir / "jetstream"))


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """asyncpg speaks `postgresql://`; SQLAlchemy's URL names the driver as well."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _postgres_database(service: str, url: str) -> DatabaseFootprint:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        size = await connection.fetchval("SELECT pg_database_size(current_database())")
        rows: dict[str, int | None] = {}
        for table in KIT_TABLES:
            present = await connection.fetchval("SELECT to_regclass($1)", f"public.{table}")
            rows[table] = (
                await connection.fetchval(f"SELECT count(*) FROM {table}") if present else None
            )
        try:
            rows[UNPUBLISHED] = (
                await connection.fetchval(UNPUBLISHED_QUERY) if rows["outbox"] is not None else None
            )
        except asyncpg.PostgresError:
            rows[UNPUBLISHED] = None
        return DatabaseFootprint(service, int(size), rows)
    finally:
        await connection.close()


async def postgres_footprint(urls: Mapping[str, str], run_dir: Path) -> Footprint:
    """pg_database_size and the kit's rows of each service's database, and JetStream's store."""
    databases = [await _postgres_database(service, url) for service, url in urls.items()]
    return Footprint(databases, await asyncio.to_thread(folder_bytes, run_dir / "jetstream"))
