"""Transactional outbox: events are rows committed with the change, published by a relay.

The relay reads unpublished rows in commit order, publishes a whole batch to JetStream at once
(many publishes in flight, one round trip of waiting), then marks the acknowledged rows sent in
one UPDATE. A relay killed between publishing and marking republishes the same rows when it
starts again; each carries `Nats-Msg-Id` = event id, so JetStream refuses the copies. Replicas
sharing a database may run relays side by side for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.js.api import PubAck
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.events import Envelope
from services.kit.tables import READ_ONLY, outbox

if TYPE_CHECKING:
    from services.kit.bus import EventBus
    from services.kit.db import Database

log = logging.getLogger(__name__)


async def insert_outbox_rows(connection: AsyncConnection, envelopes: Sequence[Envelope]) -> None:
    """Add events to the outbox inside the caller's transaction."""
    await connection.execute(
        insert(outbox),
        [
            {
                "event_id": e.event_id,
                "event_type": e.event_type,
                "subject": e.subject,
                "order_id": e.order_id,
                "customer_id": e.customer_id,
                "occurred_at": e.occurred_at,
                "traceparent": e.traceparent,
                "payload": e.payload,
            }
            for e in envelopes
        ],
    )


def _envelope(row: dict[str, object]) -> Envelope:
    occurred_at = row["occurred_at"]
    assert isinstance(occurred_at, datetime)
    if occurred_at.tzinfo is None:  # SQLite keeps no zone; we only ever store UTC.
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return Envelope(
        event_id=str(row["event_id"]),
        event_type=str(row["event_type"]),
        subject=str(row["subject"]),
        order_id=str(row["order_id"]),
        customer_id=str(row["customer_id"]),
        occurred_at=occurred_at,
        traceparent=str(row["traceparent"]),
        payload=bytes(row["payload"]),  # type: ignore[call-overload]
    )


class OutboxRelay:
    """Publishes committed outbox rows to JetStream until stopped."""

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        *,
        batch_size: int = 512,
        idle_poll_seconds: float = 0.5,
        publish_timeout: float = 5.0,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.database = database
        self.bus = bus
        self.batch_size = batch_size
        self.idle_poll_seconds = idle_poll_seconds
        self.publish_timeout = publish_timeout
        self._on_health = on_health
        self.published = 0
        self.duplicates = 0
        self._healthy: bool | None = None

    async def _set_health(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            if self._on_health is not None:
                await self._on_health(healthy)

    async def run(self) -> None:
        """Relay forever: publish what is pending, then wait for the next commit or poll."""
        await self.bus.wait_ready()
        backoff = 0.1
        while True:
            written = self.database.outbox_written
            written.clear()
            try:
                sent = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._set_health(False)
                log.warning(
                    "outbox relay failed; retrying",
                    extra={"error": str(exc) or type(exc).__name__, "retry_in_seconds": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            await self._set_health(True)
            if sent < self.batch_size:
                # Caught up: sleep until a local commit wakes us, or poll for other writers.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(written.wait(), self.idle_poll_seconds)

    async def relay_once(self) -> int:
        """Publish one batch of pending events; returns how many were sent."""
        async with self.database.engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY: True})
            rows = (
                (
                    await connection.execute(
                        select(outbox)
                        .where(outbox.c.published_at.is_(None))
                        .order_by(outbox.c.seq)
                        .limit(self.batch_size)
                    )
                )
                .mappings()
                .all()
            )
            await connection.rollback()
        if not rows:
            return 0
        acks = await self._publish_all([_envelope(dict(row)) for row in rows])
        sent = [row["seq"] for row, ack in zip(rows, acks, strict=True) if isinstance(ack, PubAck)]
        if sent:
            async with self.database.engine.begin() as connection:
                await connection.execute(
                    update(outbox)
                    .where(outbox.c.seq.in_(sent))
                    .values(published_at=datetime.now(UTC))
                )
        failures = [ack for ack in acks if not isinstance(ack, PubAck)]
        self.published += sum(1 for ack in acks if isinstance(ack, PubAck) and not ack.duplicate)
        self.duplicates += sum(1 for ack in acks if isinstance(ack, PubAck) and ack.duplicate)
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(acks)} publishes failed: {failures[0]!r}")
        return len(sent)

    async def _publish_all(self, envelopes: list[Envelope]) -> list[PubAck | BaseException]:
        """Publish all at once and wait for the acks together (one wait, not one per event)."""
        js = self.bus.jetstream
        futures = [
            await js.publish_async(e.subject, e.payload, headers=e.headers()) for e in envelopes
        ]
        _, pending = await asyncio.wait(futures, timeout=self.publish_timeout)
        for future in pending:
            future.cancel()
        results: list[PubAck | BaseException] = []
        for future in futures:
            if future.cancelled():
                results.append(TimeoutError("no acknowledgement from JetStream in time"))
            elif (error := future.exception()) is not None:
                results.append(error)
            else:
                results.append(future.result())
        return results
