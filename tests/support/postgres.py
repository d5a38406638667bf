"""Fresh PostgreSQL databases for tests, one per test (or per module), dropped afterwards.

The server is the one on the project's machines (127.0.0.1:5432, trust auth, database `test`);
`PHONESELLER_TEST_POSTGRES` (`host:port`) points elsewhere. When no server answers, the tests
that need one are skipped loudly: a warning line on stderr, a pytest warning in the summary
and the skip reason (`-ra`). Set `PHONESELLER_TEST_REQUIRE_POSTGRES=1` (CI has the server) to
make that a failure instead of a skip.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import asyncpg
import pytest

ADMIN_DATABASE = "test"
USERS = ("postgres", "root")
CONNECT_TIMEOUT_SECONDS = 3.0

T = TypeVar("T")


class PostgresUnavailableWarning(UserWarning):
    """PostgreSQL variants of tests were skipped because no server answered."""


def _address() -> tuple[str, int]:
    host, _, port = os.environ.get("PHONESELLER_TEST_POSTGRES", "127.0.0.1:5432").rpartition(":")
    return host or "127.0.0.1", int(port or 5432)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _admin_connection(user: str) -> asyncpg.Connection:
    host, port = _address()
    return await asyncpg.connect(
        host=host, port=port, user=user, database=ADMIN_DATABASE, timeout=CONNECT_TIMEOUT_SECONDS
    )


async def _find_user() -> tuple[str | None, str]:
    errors = []
    for user in USERS:
        try:
            connection = await _admin_connection(user)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            errors.append(f"{user}: {type(exc).__name__}: {exc}")
            continue
        await connection.close()
        return user, ""
    return None, "; ".join(errors)


@functools.cache
def postgres_user() -> tuple[str | None, str]:
    """The user that can create databases, or None and why not (asked once per session)."""
    return _run(_find_user())


def _say(line: str, request: pytest.FixtureRequest | None) -> None:
    """Print past pytest's output capture, so the line shows even for a passing run."""
    capture = request.config.pluginmanager.getplugin("capturemanager") if request else None
    if capture is None:
        print(line, file=sys.stderr, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}", file=sys.stderr, flush=True)


def require_postgres(request: pytest.FixtureRequest | None = None) -> str:
    """The user to connect as; skips the calling test loudly when no server answers.

    Pass the fixture's `request` so that the warning line gets past output capture.
    """
    user, why = postgres_user()
    if user is not None:
        return user
    host, port = _address()
    reason = f"PostgreSQL not reachable at {host}:{port} (database {ADMIN_DATABASE!r}): {why}"
    if os.environ.get("PHONESELLER_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}; PHONESELLER_TEST_REQUIRE_POSTGRES=1 requires it")
    _say(f"WARNING: skipping PostgreSQL tests: {reason}", request)
    warnings.warn(reason, PostgresUnavailableWarning, stacklevel=2)
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


async def _create(user: str, name: str) -> None:
    connection = await _admin_connection(user)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop(user: str, name: str) -> None:
    connection = await _admin_connection(user)
    try:
        # FORCE: a service process killed by the test may still hold connections.
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextmanager
def fresh_database(
    prefix: str = "test", request: pytest.FixtureRequest | None = None
) -> Iterator[str]:
    """A new, uniquely named, empty database; yields its SQLAlchemy async URL, then drops it.

    Skips (loudly) when PostgreSQL is down; see `require_postgres`.
    """
    user = require_postgres(request)
    safe_prefix = "".join(c for c in prefix.lower() if c.isalnum() or c == "_")[:30]
    name = f"phoneseller_{safe_prefix}_{uuid.uuid4().hex[:12]}"
    _run(_create(user, name))
    host, port = _address()
    try:
        yield f"postgresql+asyncpg://{user}@{host}:{port}/{name}"
    finally:
        _run(_drop(user, name))


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test (import this fixture to use it)."""
    with fresh_database(request.node.name, request) as url:
        yield url
