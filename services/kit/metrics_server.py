"""The metrics endpoint of a service: `GET /metrics` on its metrics port, Prometheus' text format.

A small HTTP server on the service's own event loop (no thread): a scrape refreshes the gauges
that must be asked for — outbox rows and the age of the oldest, parked events, the consumer's
lag in JetStream — at most once a second, with a deadline, then renders the registry. So their
cost is a few cheap queries per scrape, never anything per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import func, select

from services.kit import metrics
from services.kit.bus import EventBus
from services.kit.db import Database
from services.kit.events import STREAM
from services.kit.sql import Statement
from services.kit.tables import dead_letters, outbox
from services.kit.uow import UnitOfWork

log = logging.getLogger(__name__)

_OUTBOX = Statement(
    select(func.count().label("rows"), func.min(outbox.c.occurred_at).label("oldest"))
)
_PARKED = Statement(select(func.count().label("rows")).select_from(dead_letters))

#: Scrapes closer together than this reuse the gauges of the last one.
REFRESH_INTERVAL_SECONDS = 1.0
REFRESH_TIMEOUT_SECONDS = 2.0


@dataclass
class Gauges:
    """Refreshes the gauges that come from the database and JetStream."""

    database: Database
    bus: EventBus
    #: The service's durable consumer, if it has one.
    consumer: str | None = None
    _refreshed_at: float = 0.0

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
            return
        self._refreshed_at = now
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_SECONDS):
                await self._database()
                await self._jetstream()
        except Exception as exc:  # a scrape must answer; the gauges keep their last values
            log.info("metrics refresh incomplete", extra={"error": str(exc) or repr(exc)})

    async def _database(self) -> None:
        if not self.database.is_open:
            return
        async with UnitOfWork(self.database).reading() as uow:
            pending = await uow.session.row(_OUTBOX)
            parked = await uow.session.scalar(_PARKED)
        rows = int(pending["rows"]) if pending else 0
        oldest: datetime | None = pending["oldest"] if pending else None
        metrics.OUTBOX_PENDING.set(rows)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; we only store UTC
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        metrics.OUTBOX_OLDEST.set(max(age, 0.0))
        metrics.DEAD_LETTER_ROWS.set(int(parked or 0))

    async def _jetstream(self) -> None:
        if self.consumer is None or not self.bus.connected:
            return
        info = await self.bus.jetstream.consumer_info(STREAM, self.consumer)
        metrics.CONSUMER_PENDING.labels(self.consumer).set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.labels(self.consumer).set(info.num_ack_pending or 0)


class MetricsServer:
    """`GET /metrics` (and `/`) on host:port until closed."""

    def __init__(self, host: str, port: int, gauges: Gauges) -> None:
        self.host = host
        self.port = port
        self.gauges = gauges
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD") or path not in (b"/metrics", b"/"):
                await _answer(writer, b"404 Not Found", b"text/plain", b"try /metrics\n")
                return
            await self.gauges.refresh()
            body = generate_latest(REGISTRY)
            await _answer(
                writer, b"200 OK", CONTENT_TYPE_LATEST.encode(), b"" if method == b"HEAD" else body
            )
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _answer(
    writer: asyncio.StreamWriter, status: bytes, content_type: bytes, body: bytes
) -> None:
    writer.write(
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    await writer.drain()
