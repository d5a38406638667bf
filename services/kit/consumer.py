"""Durable JetStream consumers with an inbox: every event changes the database exactly once.

Events arrive continuously: the consumer keeps pull requests for up to `batch_size` messages
outstanding on its durable consumer and tops them up as messages arrive, so JetStream pushes
each event as soon as it is published. Whatever has arrived while the previous batch was being
handled becomes the next batch — one event when they trickle in, hundreds under load — and is
handled in one unit of work together with its inbox rows (the ids of handled events), then
acknowledged. A crash before the ack makes JetStream deliver the batch again; the inbox makes
that harmless. If a handler fails, the batch is retried one event per unit of work so the
failing event is isolated: it is retried with backoff and, once it has failed `max_attempts`
times, parked in `dead_letters` with its error. It is never dropped silently and never blocks
the events behind it.

The inbox keeps an event id as long as the event can come again: until JetStream's ack floor
has passed its stream sequence (it is acknowledged, so never redelivered) and the retention,
which covers republished copies, has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, StatusCode
from sqlalchemy import bindparam, delete, select

from services.kit import context, metrics, tracing
from services.kit.events import EVENT_TYPE, MSG_ID, STREAM, Envelope, EventTypes
from services.kit.sql import Statement, insert_row
from services.kit.tables import dead_letters, inbox
from services.kit.uow import UnitOfWork

if TYPE_CHECKING:
    from services.kit.bus import EventBus

log = logging.getLogger(__name__)

#: What a service does with one event, inside the batch's unit of work.
Handler = Callable[[Any, Message, Envelope], Awaitable[None]]
#: What a service does with all new events of a batch at once (one statement for many rows).
BatchHandler = Callable[[Any, Sequence[tuple[Message, Envelope]]], Awaitable[None]]


def handles_batches(handler: BatchHandler) -> BatchHandler:
    """Mark a handler that takes a whole batch; hot paths avoid a round trip per event."""
    handler.handles_batches = True  # type: ignore[attr-defined]
    return handler


@dataclass
class ConsumerSettings:
    """Tuning of one durable consumer; the defaults suit every service."""

    #: Messages requested from JetStream at a time (kept outstanding, topped up by halves),
    #: and the most events handled in one unit of work.
    batch_size: int = 512
    #: Redelivery after this long without an ack; handlers take milliseconds.
    ack_wait_seconds: float = 10.0
    max_ack_pending: int = 4096
    #: Deliveries after which a failing event is parked.
    max_attempts: int = 5
    #: Delay before redelivery after the n-th failure (the last value repeats).
    backoff_seconds: Sequence[float] = field(default_factory=lambda: (0.2, 1.0, 2.0, 5.0))
    #: How long a pull request waits on the server before it expires and is renewed.
    pull_expires_seconds: float = 30.0
    #: JetStream sends a heartbeat this often while a pull request waits; silence for three
    #: of them means the requests were lost (e.g. the server restarted): ask again.
    heartbeat_seconds: float = 5.0
    #: Inbox ids are kept at least this long (see the module docstring) …
    inbox_retention_seconds: float = 300.0
    #: … and pruned this often, `prune_batch` rows per unit of work with a pause between: a
    #: soak at full load found 30 s rounds of 1,000-row deletes holding the writer long enough
    #: (tens of thousands of rows a round) to push saga latency past 2 s and clawbacks past
    #: their timeout. Small, frequent, interleaved deletes keep up unnoticed.
    prune_interval_seconds: float = 5.0
    prune_batch: int = 500
    prune_pause_seconds: float = 0.02


_SEEN = Statement(
    select(inbox.c.event_id).where(inbox.c.event_id.in_(bindparam("ids", expanding=True)))
)
_HANDLED = insert_row(inbox)
_PARK = insert_row(dead_letters)
_KNOWN = Statement(select(inbox.c.event_id).where(inbox.c.event_id == bindparam("event_id")))
_PRUNE = Statement(
    delete(inbox).where(
        inbox.c.event_id.in_(
            select(inbox.c.event_id)
            .where(
                inbox.c.handled_at < bindparam("before"),
                inbox.c.stream_seq <= bindparam("ack_floor"),
            )
            .limit(bindparam("limit"))
            .scalar_subquery()
        )
    )
)


class _Pull:
    """The pull requests outstanding on the server, and the messages they brought."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.requested = 0
        self.arrived: deque[Msg] = deque()
        self.ready = asyncio.Event()
        #: When the server last said anything (a message or a heartbeat), loop time.
        self.last_heard = 0.0
        #: Set when the server says our durable consumer is gone.
        self.consumer_deleted = False

    async def on_message(self, msg: Msg) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        if not status:
            self.requested = max(self.requested - 1, 0)
            self.arrived.append(msg)
            self.ready.set()
            return
        if status == StatusCode.CONTROL_MESSAGE:
            return  # an idle heartbeat: the requests are still there
        # 404/408/409: a request ended (expired, or the server gave up on it); the header says
        # how many of its messages it did not deliver.
        pending = (msg.headers or {}).get("Nats-Pending-Messages", "")
        self.requested -= int(pending) if pending.isdigit() else self.requested
        self.requested = max(self.requested, 0)
        description = (msg.headers or {}).get(Header.DESCRIPTION, "")
        if status == StatusCode.CONFLICT and "Consumer Deleted" in description:
            self.consumer_deleted = True
        self.ready.set()

    def take(self) -> list[Msg]:
        batch = [self.arrived.popleft() for _ in range(min(len(self.arrived), self.batch_size))]
        if not self.arrived:
            self.ready.clear()
        return batch


class EventConsumer:
    """A durable pull consumer named after its service, applying events through a handler."""

    def __init__(
        self,
        name: str,
        bus: EventBus,
        event_types: EventTypes,
        handler: Handler | BatchHandler,
        unit_of_work: Callable[[], UnitOfWork],
        settings: ConsumerSettings | None = None,
    ) -> None:
        self.name = name
        self.bus = bus
        self.event_types = event_types
        self.handler = handler
        self.unit_of_work = unit_of_work
        self.settings = settings or ConsumerSettings()
        self.handled = 0
        self.parked = 0
        self.pruned = 0

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
        """Receive and handle batches until cancelled; survives NATS outages."""
        while True:
            js = await self.bus.wait_ready()
            try:
                await js.add_consumer(STREAM, self.config())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cannot create consumer; retrying",
                    extra={"consumer": self.name, "error": str(exc) or repr(exc)},
                )
                await asyncio.sleep(1.0)
                continue
            pruning = asyncio.create_task(self._prune_forever(), name=f"{self.name}-inbox-pruning")
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer interrupted; resubscribing",
                    extra={"consumer": self.name, "error": str(exc) or repr(exc)},
                )
                await asyncio.sleep(0.5)
            finally:
                pruning.cancel()
                await asyncio.gather(pruning, return_exceptions=True)

    async def _consume(self) -> None:
        client = self.bus.client
        pull = _Pull(self.settings.batch_size)
        inbox_subject = client.new_inbox()
        subscription = await client.subscribe(inbox_subject, cb=pull.on_message)
        loop = asyncio.get_running_loop()
        generation = -1
        try:
            while True:
                if pull.consumer_deleted:
                    raise RuntimeError("the durable consumer was deleted on the server")
                if generation != self.bus.generation:
                    # (Re)connected: requests made on an earlier connection are gone.
                    generation, pull.requested = self.bus.generation, 0
                    pull.last_heard = loop.time()
                if loop.time() - pull.last_heard > 3 * self.settings.heartbeat_seconds:
                    log.info("no word from JetStream; asking again", extra={"consumer": self.name})
                    pull.requested, pull.last_heard = 0, loop.time()
                await self._request_more(pull, inbox_subject)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the wait in a task
                # of its own, and a cancel that met the event being set left that task (and our
                # SIGTERM'd service) waiting forever (seen in the zero-downtime test).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.heartbeat_seconds):
                        await pull.ready.wait()
                batch = pull.take()
                if batch:
                    await self.handle_batch(batch)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _request_more(self, pull: _Pull, reply: str) -> None:
        """Keep at least half a batch requested (nats.go's Consume does the same)."""
        missing = pull.batch_size - pull.requested
        if missing < pull.batch_size // 2 or not self.bus.connected:
            return
        request = {
            "batch": missing,
            "expires": int(self.settings.pull_expires_seconds * 1e9),
            "idle_heartbeat": int(self.settings.heartbeat_seconds * 1e9),
        }
        await self.bus.client.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{self.name}",
            json.dumps(request).encode(),
            reply=reply,
        )
        pull.requested += missing

    async def handle_batch(self, messages: Sequence[Msg]) -> None:
        """Apply a batch once, then acknowledge it."""
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
            async with self.unit_of_work() as uow:
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
        metrics.events_handled(self.name, (envelope.event_type for _, envelope, _ in decoded))

    async def acknowledge(self, messages: Sequence[Msg]) -> None:
        """Ack a committed batch. Dying before this is safe: the inbox absorbs redelivery."""
        for msg in messages:  # each ack is a buffered publish; no task per message
            await msg.ack()

    async def _apply(self, uow: UnitOfWork, items: Sequence[tuple[Msg, Envelope, Message]]) -> None:
        ids = [envelope.event_id for _, envelope, _ in items]
        seen = {row["event_id"] for row in await uow.session.rows(_SEEN, ids=ids)}
        fresh: list[tuple[Message, Envelope]] = []
        sequences: list[int] = []
        for msg, envelope, event in items:
            if envelope.event_id not in seen:
                seen.add(envelope.event_id)  # the same event twice in one batch
                fresh.append((event, envelope))
                sequences.append(msg.metadata.sequence.stream)
        if not fresh:
            return
        if getattr(self.handler, "handles_batches", False):
            batch_handler: Any = self.handler
            with tracing.consuming_batch(self.name, [envelope for _, envelope in fresh]):
                await batch_handler(uow, fresh)
        else:
            handler: Any = self.handler
            for event, envelope in fresh:
                # A CONSUMER span, child of the producer's (tracing on), or the event's
                # traceparent bound (off): the logs, and the events the handler causes.
                with tracing.consuming(self.name, envelope):
                    await handler(uow, event, envelope)
        now = datetime.now(UTC)
        await uow.session.execute_many(
            _HANDLED,
            [
                {
                    "event_id": envelope.event_id,
                    "event_type": envelope.event_type,
                    "handled_at": now,
                    "stream_seq": sequence,
                }
                for (_, envelope), sequence in zip(fresh, sequences, strict=True)
            ],
        )

    async def _handle_alone(self, item: tuple[Msg, Envelope, Message]) -> None:
        msg, envelope, _ = item
        try:
            async with self.unit_of_work() as uow:
                await self._apply(uow, [item])
                await uow.commit()
        except Exception as exc:
            attempts = msg.metadata.num_delivered or 1
            if attempts >= self.settings.max_attempts:
                await self._park(msg, envelope, f"{type(exc).__name__}: {exc}")
                return
            delays = self.settings.backoff_seconds
            delay = delays[min(attempts, len(delays)) - 1]
            with context.bound(order_id=envelope.order_id, parent=envelope.traceparent or None):
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
        metrics.events_handled(self.name, (envelope.event_type,))

    async def _park(self, msg: Msg, envelope: Envelope | None, error: str) -> None:
        """Move an event aside with its error, mark it handled, and let the stream move on."""
        headers = msg.headers or {}
        event_id = (
            envelope.event_id
            if envelope
            else headers.get(MSG_ID) or (f"unreadable-{msg.metadata.sequence.stream}")
        )
        async with self.unit_of_work() as uow:
            if await uow.session.row(_KNOWN, event_id=event_id) is None:
                now = datetime.now(UTC)
                event_type = envelope.event_type if envelope else headers.get(EVENT_TYPE, "")
                await uow.session.execute(
                    _PARK,
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
                await uow.session.execute(
                    _HANDLED,
                    event_id=event_id,
                    event_type=event_type,
                    handled_at=now,
                    stream_seq=msg.metadata.sequence.stream,
                )
                await uow.commit()
                self.parked += 1
                metrics.event_parked(self.name, event_type)
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

    async def prune(self) -> int:
        """Forget inbox ids of events that cannot come again; returns how many."""
        info = await self.bus.jetstream.consumer_info(STREAM, self.name)
        ack_floor = info.ack_floor.stream_seq if info.ack_floor else 0
        before = datetime.now(UTC) - timedelta(seconds=self.settings.inbox_retention_seconds)
        removed = 0
        while True:
            async with self.unit_of_work() as uow:
                count = await uow.session.execute(
                    _PRUNE, before=before, ack_floor=ack_floor, limit=self.settings.prune_batch
                )
                await uow.commit()
            removed += count
            if count < self.settings.prune_batch:
                break
            await asyncio.sleep(self.settings.prune_pause_seconds)  # let the rest go first
        self.pruned += removed
        return removed

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.prune_interval_seconds)
            try:
                if removed := await self.prune():
                    log.debug("inbox pruned", extra={"consumer": self.name, "removed": removed})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pruning is housekeeping: try again next round
                log.info("inbox pruning failed", extra={"consumer": self.name, "error": repr(exc)})
