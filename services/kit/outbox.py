"""Transactional outbox: events are rows committed with the change, published by a relay.

The relay reads pending rows in commit order, publishes a whole batch to JetStream at once
(many publishes in flight, one round trip of waiting), then deletes the acknowledged rows in
one unit of work, so the table only ever holds what is still to be sent. A relay killed
between publishing and deleting republishes the same rows when it starts again; each carries
`Nats-Msg-Id` = event id, so JetStream refuses the copies within its duplicate window.

Replicas sharing a database each run a relay. A relay publishes the rows its own process
wrote at once and another process's only once they are overdue (that process is gone, or its
relay is stuck): two relays publishing every row twice cost twice as much for nothing, while
a dead replica's events must still go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, or_, select

from services.kit import metrics, tracing
from services.kit.bus import Published
from services.kit.events import Envelope
from services.kit.sql import Statement
from services.kit.tables import outbox
from services.kit.uow import UnitOfWork

if TYPE_CHECKING:
    from services.kit.bus import EventBus
    from services.kit.db import Database

log = logging.getLogger(__name__)

_PENDING = Statement(
    select(outbox)
    .where(or_(outbox.c.writer == bindparam("writer"), outbox.c.occurred_at < bindparam("overdue")))
    .order_by(outbox.c.seq)
    .limit(bindparam("limit"))
)
# By event id, not seq: SQLite may give a freed seq to a new row, and a second relay (another
# replica) deleting what it sent must never take a row it did not send.
_SENT = Statement(delete(outbox).where(outbox.c.event_id == bindparam("event_id")))


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
        overdue_seconds: float = 2.0,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.database = database
        self.bus = bus
        self.batch_size = batch_size
        self.idle_poll_seconds = idle_poll_seconds
        self.publish_timeout = publish_timeout
        #: Another writer's rows are this process's to publish once they are this old.
        self.overdue = timedelta(seconds=overdue_seconds)
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
                # asyncio.timeout, not wait_for (see the consumer: cancels can be lost on 3.11).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_poll_seconds):
                        await written.wait()

    async def relay_once(self) -> int:
        """Publish one batch of pending events; returns how many were sent."""
        async with UnitOfWork(self.database).reading() as uow:
            rows = await uow.session.rows(
                _PENDING,
                writer=self.database.writer_id,
                overdue=datetime.now(UTC) - self.overdue,
                limit=self.batch_size,
            )
        if not rows:
            return 0
        envelopes = [Envelope.from_outbox_row(row) for row in rows]
        # Tracing on: a PRODUCER span per event, whose context the published headers carry.
        with tracing.producing(envelopes) as producing:
            acks = await self.bus.publish_all(producing.envelopes, self.publish_timeout)
            producing.acknowledged(acks)
        sent = [
            {"event_id": row["event_id"]}
            for row, ack in zip(rows, acks, strict=True)
            if isinstance(ack, Published)
        ]
        if sent:
            async with UnitOfWork(self.database) as uow:
                await uow.session.execute_many(_SENT, sent)
                await uow.commit()
        failures = [ack for ack in acks if not isinstance(ack, Published)]
        published = [
            envelope.event_type
            for envelope, ack in zip(envelopes, acks, strict=True)
            if isinstance(ack, Published) and not ack.duplicate
        ]
        duplicates = sum(1 for ack in acks if isinstance(ack, Published) and ack.duplicate)
        metrics.events_published(published, duplicates, len(failures))
        self.published += len(published)
        self.duplicates += duplicates
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(acks)} publishes failed: {failures[0]!r}")
        return len(sent)
