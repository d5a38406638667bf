"""Durable JetStream consumers with an inbox: every event changes the database exactly once.

A fetched batch is handled in one transaction together with its inbox rows (the ids of handled
events), then acknowledged. A crash before the ack makes JetStream deliver the batch again;
the inbox makes that harmless. If a handler fails, the batch is retried one event per
transaction so the failing event is isolated: it is retried with backoff and, once it has
failed `max_attempts` times, parked in `dead_letters` with its error. It is never dropped
silently and never blocks the events behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from sqlalchemy import insert, select

from services.kit import context
from services.kit.events import STREAM, Envelope, EventTypes
from services.kit.tables import dead_letters, inbox

if TYPE_CHECKING:
    from services.kit.bus import EventBus
    from services.kit.db import Database, UnitOfWork

log = logging.getLogger(__name__)

#: What a service does with one event, inside the batch's unit of work.
Handler = Callable[["UnitOfWork", Message, Envelope], Awaitable[None]]
#: What a service does with all new events of a batch at once (one statement for many rows).
BatchHandler = Callable[["UnitOfWork", Sequence[tuple[Message, Envelope]]], Awaitable[None]]


def handles_batches(handler: BatchHandler) -> BatchHandler:
    """Mark a handler that takes a whole batch; hot paths avoid a round trip per event."""
    handler.handles_batches = True  # type: ignore[attr-defined]
    return handler


@dataclass
class ConsumerSettings:
    """Tuning of one durable consumer; the defaults suit every service."""

    batch_size: int = 512
    fetch_timeout: float = 1.0
    #: Redelivery after this long without an ack; handlers take milliseconds.
    ack_wait_seconds: float = 10.0
    max_ack_pending: int = 4096
    #: Deliveries after which a failing event is parked.
    max_attempts: int = 5
    #: Delay before redelivery after the n-th failure (the last value repeats).
    backoff_seconds: Sequence[float] = field(default_factory=lambda: (0.2, 1.0, 2.0, 5.0))


def _cancel_requested() -> bool:
    """True once this task was asked to stop, even if the CancelledError never arrived.

    nats-py's `fetch` waits in an inner task running `asyncio.wait_for`; on Python 3.11 a
    cancel that meets a message already taken from the subscription's queue is swallowed and
    the message returned instead. While events stream in that happens often enough (measured:
    8 of 300 cancels of a fetch loop) that a SIGTERM'd service could loop on until SIGKILL.
    The task still counts the request (`Task.cancelling()`), so the loop checks it.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EventConsumer:
    """A durable pull consumer named after its service, applying events through a handler."""

    def __init__(
        self,
        name: str,
        database: Database,
        bus: EventBus,
        event_types: EventTypes,
        handler: Handler | BatchHandler,
        settings: ConsumerSettings | None = None,
    ) -> None:
        self.name = name
        self.database = database
        self.bus = bus
        self.event_types = event_types
        self.handler = handler
        self.settings = settings or ConsumerSettings()
        self.handled = 0
        self.parked = 0

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=self.event_types.subjects,
            ack_wait=self.settings.ack_wait_seconds,
            max_ack_pending=self.settings.max_ack_pending,
            # We park failing events ourselves after max_attempts, with their error; JetStream
            # must not give up on them first.
            max_deliver=-1,
        )

    async def run(self) -> None:
        """Fetch and handle batches until cancelled; survives NATS outages."""
        while True:
            js = await self.bus.wait_ready()
            try:
                await js.add_consumer(STREAM, self.config())
                subscription = await js.pull_subscribe_bind(durable=self.name, stream=STREAM)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cannot bind consumer; retrying",
                    extra={"consumer": self.name, "error": str(exc) or repr(exc)},
                )
                await asyncio.sleep(1.0)
                continue
            try:
                while True:
                    if _cancel_requested():
                        # A cancel lost inside nats-py's fetch (see `_cancel_requested`).
                        raise asyncio.CancelledError
                    try:
                        messages = await subscription.fetch(
                            self.settings.batch_size, timeout=self.settings.fetch_timeout
                        )
                    except (FetchTimeoutError, TimeoutError):
                        continue
                    await self.handle_batch(messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer interrupted; resubscribing",
                    extra={"consumer": self.name, "error": str(exc) or repr(exc)},
                )
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def handle_batch(self, messages: Sequence[Msg]) -> None:
        """Apply a fetched batch once, then acknowledge it."""
        decoded: list[tuple[Msg, Envelope, Message]] = []
        for msg in messages:
            try:
                envelope = Envelope.from_message(msg.subject, msg.headers, msg.data)
                event = self.event_types.decode(envelope)
            except ValueError as exc:
                # Undecodable now means undecodable forever: park at once.
                await self._park(msg, None, str(exc))
                continue
            decoded.append((msg, envelope, event))
        if not decoded:
            return
        try:
            async with self.database.unit_of_work() as uow:
                await self._apply(uow, decoded)
                await uow.commit()
        except Exception as exc:
            log.info(
                "batch failed; handling its events one by one",
                extra={"consumer": self.name, "error": str(exc) or repr(exc)},
            )
            for item in decoded:
                await self._handle_alone(item)
            return
        await self.acknowledge([msg for msg, _, _ in decoded])
        self.handled += len(decoded)

    async def acknowledge(self, messages: Sequence[Msg]) -> None:
        """Ack a committed batch. Dying before this is safe: the inbox absorbs redelivery."""
        for msg in messages:  # each ack is a buffered publish; no task per message
            await msg.ack()

    async def _apply(self, uow: UnitOfWork, items: Sequence[tuple[Msg, Envelope, Message]]) -> None:
        ids = [envelope.event_id for _, envelope, _ in items]
        seen = set(
            (
                await uow.connection.execute(
                    select(inbox.c.event_id).where(inbox.c.event_id.in_(ids))
                )
            ).scalars()
        )
        fresh: list[tuple[Message, Envelope]] = []
        for _, envelope, event in items:
            if envelope.event_id not in seen:
                seen.add(envelope.event_id)  # the same event twice in one batch
                fresh.append((event, envelope))
        if not fresh:
            return
        if getattr(self.handler, "handles_batches", False):
            batch_handler: Any = self.handler
            await batch_handler(uow, fresh)
        else:
            handler: Any = self.handler
            for event, envelope in fresh:
                with context.bound(order_id=envelope.order_id, parent=envelope.traceparent or None):
                    await handler(uow, event, envelope)
        now = datetime.now(UTC)
        await uow.connection.execute(
            insert(inbox),
            [
                {
                    "event_id": envelope.event_id,
                    "event_type": envelope.event_type,
                    "handled_at": now,
                }
                for _, envelope in fresh
            ],
        )

    async def _handle_alone(self, item: tuple[Msg, Envelope, Message]) -> None:
        msg, envelope, _ = item
        try:
            async with self.database.unit_of_work() as uow:
                await self._apply(uow, [item])
                await uow.commit()
        except Exception as exc:
            attempts = msg.metadata.num_delivered or 1
            if attempts >= self.settings.max_attempts:
                await self._park(msg, envelope, f"{type(exc).__name__}: {exc}")
                return
            delays = self.settings.backoff_seconds
            delay = delays[min(attempts, len(delays)) - 1]
            with context.bound(order_id=envelope.order_id):
                log.warning(
                    "event failed; will retry",
                    extra={
                        "consumer": self.name,
                        "event_id": envelope.event_id,
                        "event_type": envelope.event_type,
                        "attempt": attempts,
                        "retry_in_seconds": delay,
                        "error": str(exc) or repr(exc),
                    },
                )
            await msg.nak(delay=delay)
            return
        await msg.ack()
        self.handled += 1

    async def _park(self, msg: Msg, envelope: Envelope | None, error: str) -> None:
        """Move an event aside with its error, mark it handled, and let the stream move on."""
        headers = msg.headers or {}
        event_id = (
            envelope.event_id
            if envelope
            else headers.get("Nats-Msg-Id") or (f"unreadable-{msg.metadata.sequence.stream}")
        )
        async with self.database.unit_of_work() as uow:
            already = (
                await uow.connection.execute(
                    select(inbox.c.event_id).where(inbox.c.event_id == event_id)
                )
            ).first()
            if already is None:
                now = datetime.now(UTC)
                event_type = (
                    envelope.event_type if envelope else headers.get("Phoneseller-Event-Type", "")
                )
                await uow.connection.execute(
                    insert(dead_letters).values(
                        event_id=event_id,
                        event_type=event_type,
                        subject=msg.subject,
                        order_id=envelope.order_id if envelope else "",
                        payload=msg.data,
                        headers=json.dumps(headers),
                        error=error[:4000],
                        deliveries=msg.metadata.num_delivered or 1,
                        parked_at=now,
                    )
                )
                await uow.connection.execute(
                    insert(inbox).values(event_id=event_id, event_type=event_type, handled_at=now)
                )
                await uow.commit()
                self.parked += 1
                log.error(
                    "event parked in dead_letters",
                    extra={
                        "consumer": self.name,
                        "event_id": event_id,
                        "order_id": envelope.order_id if envelope else "",
                        "error": error,
                    },
                )
        await msg.ack()
