"""Rebuild the customer view by replaying the PHONESELLER stream into a new database.

    python -m services.customer.rebuild --database-url URL [--nats-url URL]
        [--nats-nkey-file FILE] [--json]

The view is built only from events, so it can always be rebuilt: this command reads the stream
from its first message with an ephemeral consumer (nothing is acknowledged, the service's
durable consumer is not touched), projects each fetched batch exactly as the service does, and
stops once it has reached the last sequence the stream had when it started. It then reports
how many events it applied. docs/customer-view.md says how to swap the result in.

The database must be new (empty), or one this command filled before: it records the last
replayed sequence in `customer_replay`, and a second run continues from there, so a short
second run after stopping the live service closes the gap before the swap. A database that
holds a view the command did not build (the live one) is refused.

It connects as NATS user `customer` (the customer service's nkey, `--nats-nkey-file` or
$PHONESELLER_NATS_NKEY_FILE), which may use one replay consumer, `customer-rebuild`, besides
its durable one: so one rebuild runs at a time, and a run first removes what a crashed run left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError, NotFoundError

from services.customer.domain import EVENT_TYPES, Fact, fact_from_event
from services.customer.repository import CustomerUnitOfWork, ReplayCheckpoint, metadata
from services.kit import logs, tables
from services.kit.bus import auth_options
from services.kit.clock import utcnow
from services.kit.db import Database, DatabaseError
from services.kit.events import STREAM, Envelope

log = logging.getLogger("services.customer.rebuild")


MAX_BATCH_SIZE = 4096
#: The NATS user the rebuild runs as, and the name of its ephemeral consumer: NATS grants that
#: user this one consumer name (stack/nats.py), as a server-made name could not be granted.
NATS_USER = "customer"
REPLAY_CONSUMER = "customer-rebuild"


class RebuildError(Exception):
    """The rebuild cannot start or go on; the message says why."""


@dataclass(frozen=True)
class RebuildReport:
    stream: str
    #: The first stream sequence this run asked for (1, or one past a previous run's end).
    from_sequence: int
    #: The stream's last sequence when this run started: where it stopped.
    to_sequence: int
    #: Messages of consumed event types read in that range.
    read: int
    #: Events that changed the view (new event ids).
    applied: int
    #: Events whose id the view already held (republished copies, or an earlier run's).
    duplicates: int
    #: Messages that were not readable events; they were skipped and logged.
    skipped: int
    #: Sequences the stream no longer holds (removed by its limits) that this run needed.
    missing: int
    #: Orders in the view afterwards.
    orders: int

    def summary(self) -> str:
        span = (
            f"sequences {self.from_sequence}..{self.to_sequence}"
            if self.from_sequence <= self.to_sequence
            else f"nothing after sequence {self.to_sequence}"
        )
        text = (
            f"applied {self.applied} events to the customer view from stream {self.stream} "
            f"{span} (read {self.read}, duplicates {self.duplicates}, skipped {self.skipped}); "
            f"the view holds {self.orders} orders"
        )
        if self.missing:
            text += f"; WARNING: {self.missing} sequences are no longer in the stream"
        return text


async def _open(database: Database, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await database.open(retry_interval=0.5)
    except TimeoutError:
        raise RebuildError(f"cannot open the database within {seconds:g} s") from None


def _fact(msg: Msg) -> Fact | None:
    """The message's fact, or None (logged) if it is not an event the view can place."""
    try:
        envelope = Envelope.from_message(msg.subject, msg.headers, msg.data)
        return fact_from_event(EVENT_TYPES.decode(envelope))
    except ValueError as exc:
        log.warning(
            "skipping a message that is not a readable event",
            extra={"sequence": msg.metadata.sequence.stream, "error": str(exc)},
        )
        return None


async def rebuild(
    database_url: str,
    nats_url: str,
    *,
    nkey_file: str = "",
    batch_size: int = 256,
    fetch_timeout: float = 1.0,
    open_timeout: float = 15.0,
) -> RebuildReport:
    """Replay the stream into the view database at `database_url`; see the module doc."""
    database = Database(database_url, tables.metadata, metadata)
    try:
        await _open(database, open_timeout)
        async with CustomerUnitOfWork(database).reading() as uow:
            checkpoint = await uow.views.checkpoint(STREAM)
            if checkpoint is None and await uow.views.count_facts() > 0:
                raise RebuildError(
                    "the database already holds a customer view this command did not build "
                    "(the live one?); rebuild into a new, empty database"
                )
        try:
            client = await nats.connect(
                servers=nats_url.split(","),
                connect_timeout=3,
                max_reconnect_attempts=2,
                **auth_options(NATS_USER, nkey_file),
            )
        except Exception as exc:
            raise RebuildError(f"cannot connect to NATS at {nats_url}: {exc!r}") from None
        try:
            return await _replay(
                database, client.jetstream(timeout=10), checkpoint, batch_size, fetch_timeout
            )
        finally:
            await client.close()
    finally:
        await database.close()


async def _replay(
    database: Database,
    js: nats.js.JetStreamContext,
    checkpoint: ReplayCheckpoint | None,
    batch_size: int,
    fetch_timeout: float,
) -> RebuildReport:
    try:
        stream = await js.stream_info(STREAM)
    except NotFoundError:
        raise RebuildError(f"NATS has no stream {STREAM}; is this the right server?") from None
    target: int = stream.state.last_seq
    first_available: int = stream.state.first_seq
    start = checkpoint.last_sequence + 1 if checkpoint else 1
    missing = max(0, min(first_available, target + 1) - start)
    read = applied = duplicates = skipped = 0
    position = start - 1
    applied_total = checkpoint.events_applied if checkpoint else 0
    saved = checkpoint

    async def commit(facts: list[Fact], up_to: int) -> None:
        nonlocal applied, duplicates, applied_total, saved
        async with CustomerUnitOfWork(database) as uow:
            new = await uow.views.apply(facts)
            mark = ReplayCheckpoint(STREAM, up_to, applied_total + new)
            await uow.views.save_checkpoint(mark, saved, utcnow())
            await uow.commit()
        applied += new
        duplicates += len(facts) - new
        applied_total += new
        saved = mark

    if start <= target:
        # An ephemeral consumer of our own: the service's durable consumer is left alone. One
        # left by a run that died would refuse our start sequence until it expires.
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(STREAM, REPLAY_CONSUMER)
        consumer = await js.add_consumer(
            STREAM,
            ConsumerConfig(
                name=REPLAY_CONSUMER,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                filter_subjects=EVENT_TYPES.subjects,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        subscription = await js.pull_subscribe_bind(consumer=consumer.name, stream=STREAM)
        try:
            caught_up = False
            while not caught_up:
                try:
                    messages = await subscription.fetch(batch_size, timeout=fetch_timeout)
                except (FetchTimeoutError, TimeoutError):
                    # Nothing came: done if the consumer has nothing left for us either (the
                    # stream's last messages may be of types the view does not consume).
                    caught_up = not (await subscription.consumer_info()).num_pending
                    continue
                facts: list[Fact] = []
                up_to = position
                for msg in messages:
                    sequence = msg.metadata.sequence.stream
                    if sequence > target:
                        caught_up = True
                        break
                    read += 1
                    up_to = sequence
                    if (fact := _fact(msg)) is None:
                        skipped += 1
                    else:
                        facts.append(fact)
                    if sequence == target or msg.metadata.num_pending == 0:
                        caught_up = True
                if up_to > position:
                    await commit(facts, up_to)
                    position = up_to
                    log.info("replayed", extra={"sequence": position, "applied": applied})
        finally:
            await subscription.unsubscribe()
            try:
                await js.delete_consumer(STREAM, consumer.name)
            except Exception:  # it expires by itself (inactive_threshold)
                log.debug("could not delete the ephemeral consumer")
        if position < target:
            # Every message of our types up to the target has been delivered.
            await commit([], target)
    async with CustomerUnitOfWork(database).reading() as uow:
        orders = await uow.views.count_orders()
    return RebuildReport(
        stream=STREAM,
        from_sequence=start,
        to_sequence=max(target, start - 1),
        read=read,
        applied=applied,
        duplicates=duplicates,
        skipped=skipped,
        missing=missing,
        orders=orders,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.customer.rebuild",
        description="Rebuild the customer view by replaying the PHONESELLER stream into a new "
        "database (docs/customer-view.md).",
    )
    parser.add_argument(
        "--database-url",
        required=True,
        help="URL of the NEW view database, e.g. sqlite:///.run/data/customer-rebuilt.db",
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("PHONESELLER_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server(s), comma-separated (default: $PHONESELLER_NATS_URL or %(default)s)",
    )
    parser.add_argument(
        "--nats-nkey-file",
        default=os.environ.get("PHONESELLER_NATS_NKEY_FILE", ""),
        help="the customer service's NATS nkey seed (default: $PHONESELLER_NATS_NKEY_FILE)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="events per transaction (%(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--log-level", default=os.environ.get("PHONESELLER_LOG_LEVEL", "WARNING").upper()
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        # A batch's ids go into IN lists; PostgreSQL takes at most 32,767 parameters.
        parser.error(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    logs.configure("customer-rebuild", args.log_level)
    try:
        report = asyncio.run(
            rebuild(
                args.database_url,
                args.nats_url,
                nkey_file=args.nats_nkey_file,
                batch_size=args.batch_size,
            )
        )
    except (RebuildError, DatabaseError) as exc:
        print(f"customer view rebuild: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report)) if args.json else report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
