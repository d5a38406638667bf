"""`make bench-events`: events/s through outbox → JetStream → inbox, beside raw JetStream.

Starts its own nats-server on a free port (JetStream on a temporary folder), then measures:
1. raw JetStream: pipelined publish with acks, and pull fetch(256) + ack;
2. end to end: a writer commits changes (transactions of `--per-transaction` events) into a
   SQLite outbox while the real OutboxRelay publishes them and the real EventConsumer applies
   them with its inbox into a second SQLite database; the clock runs from the first commit to
   the last event handled.

Authentication is on as in `make up`: the producer publishes as NATS user order, the consumer
is a user of its own granted its durable consumer like a service's; the raw figures use admin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from phoneseller.order.v1 import events_pb2
from sqlalchemy import Column, MetaData, String, Table, func, select

from services.kit import tables
from services.kit.bus import EventBus
from services.kit.consumer import EventConsumer, handles_batches
from services.kit.db import Database
from services.kit.events import Envelope, EventTypes, new_event
from services.kit.outbox import OutboxRelay
from services.kit.sql import Statement, insert_row
from services.kit.uow import UnitOfWork
from stack.nats import Grant
from tests.support.announcements import Announcement, AnnouncingUnitOfWork
from tests.support.nats_server import NatsServer

#: The benchmark's consumer: a grant like a consuming service's.
BENCH = Grant("bench", durables=("bench",))

effects_metadata = MetaData()
effects = Table(
    "effects",
    effects_metadata,
    Column("event_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
)


async def raw_jetstream(server: NatsServer, count: int) -> tuple[float, float]:
    client = await server.connect()
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], storage=StorageType.FILE))
    payload = b"x" * 120
    start = time.perf_counter()
    futures = [
        await js.publish_async("raw.event", payload, headers={"Nats-Msg-Id": str(i)})
        for i in range(count)
    ]
    await asyncio.gather(*futures)
    publish_rate = count / (time.perf_counter() - start)

    subscription = await js.pull_subscribe(
        "raw.>", durable="raw", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    received = 0
    start = time.perf_counter()
    while received < count:
        batch = await subscription.fetch(256, timeout=5)
        await asyncio.gather(*(m.ack() for m in batch))
        received += len(batch)
    fetch_rate = count / (time.perf_counter() - start)
    await client.close()
    return publish_rate, fetch_rate


_ADD_EFFECT = insert_row(effects)
_COUNT_EFFECTS = Statement(select(func.count()).select_from(effects))


@handles_batches
async def apply_effects(uow: UnitOfWork, batch: Sequence[tuple[Message, Envelope]]) -> None:
    """The consumer's work: one effect row per event, one statement per batch."""
    await uow.session.execute_many(
        _ADD_EFFECT,
        [{"event_id": envelope.event_id, "order_id": envelope.order_id} for _, envelope in batch],
    )


async def consume(url: str, nkey_file: str, folder: Path, count: int) -> None:
    database = Database(f"sqlite:///{folder / 'consumer.db'}", tables.metadata, effects_metadata)
    await database.open()
    bus = EventBus(url, name="bench-consumer", user=BENCH.user, nkey_file=nkey_file)
    await bus.connect()
    consumer = EventConsumer(
        "bench", bus, EventTypes([events_pb2.Ordered]), apply_effects, lambda: UnitOfWork(database)
    )
    task = asyncio.create_task(consumer.run())
    while consumer.handled < count:  # noqa: ASYNC110 - polling a counter, cheaply
        await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with UnitOfWork(database).reading() as uow:
        applied = await uow.session.scalar(_COUNT_EFFECTS)
    assert applied == count, f"applied {applied} of {count}"
    await bus.close()
    await database.close()


def consumer_process(url: str, nkey_file: str, folder: str, count: int) -> None:
    asyncio.run(consume(url, nkey_file, Path(folder), count))


async def end_to_end(
    server: NatsServer, folder: Path, count: int, per_transaction: int
) -> dict[str, float]:
    """The producing service (writer + relay) here; the consuming service in its own process,
    as they would be deployed."""
    producer = Database(f"sqlite:///{folder / 'producer.db'}", tables.metadata)
    await producer.open()
    bus = EventBus(
        server.url, name="bench-producer", user="order", nkey_file=server.nkey_file("order")
    )
    await bus.connect()
    consumer = multiprocessing.get_context("spawn").Process(
        target=consumer_process,
        args=(server.url, server.nkey_file(BENCH.user), str(folder), count),
    )
    consumer.start()
    relay = OutboxRelay(producer, bus)
    relay_task = asyncio.create_task(relay.run())

    start = time.perf_counter()
    for batch in range(count // per_transaction):
        async with AnnouncingUnitOfWork(producer) as uow:
            announcement = Announcement(
                *(
                    new_event(
                        events_pb2.Ordered,
                        order_id=f"o-{batch}-{i}",
                        customer_id="c",
                        item="Galaxy",
                        quantity=1,
                        unit_price=1_000,
                        amount=1_000,
                    )
                    for i in range(per_transaction)
                )
            )
            await uow.announcements.save(announcement)
            await uow.commit()
    committed = time.perf_counter() - start
    await asyncio.to_thread(consumer.join)
    elapsed = time.perf_counter() - start
    assert consumer.exitcode == 0, "the consumer did not apply every event"

    relay_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await relay_task
    await bus.close()
    await producer.close()
    return {
        "commit_rate": count / committed,
        "end_to_end_rate": count / elapsed,
        "seconds": elapsed,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        folder = Path(tmp)
        server = NatsServer(folder / "jetstream", grants=[BENCH]).start()
        try:
            publish_rate, fetch_rate = await raw_jetstream(server, args.events)
            result: dict[str, Any] = await end_to_end(
                server, folder, args.events, args.per_transaction
            )
        finally:
            server.stop()
    raw = min(publish_rate, fetch_rate)
    print(f"events: {args.events:,}; writer commits {args.per_transaction} events per transaction")
    print(f"raw JetStream publish (pipelined, acked): {publish_rate:10,.0f} msg/s")
    print(f"raw JetStream fetch(256) + ack:           {fetch_rate:10,.0f} msg/s")
    print(f"writer commits into the outbox:           {result['commit_rate']:10,.0f} events/s")
    print(
        f"end to end outbox → JetStream → inbox:    {result['end_to_end_rate']:10,.0f} events/s"
        f"  ({result['end_to_end_rate'] / raw:.0%} of the slower raw rate)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per-transaction", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
