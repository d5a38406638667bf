"""A consumer process for kit tests: the real EventConsumer with a handler whose effect is
countable. Each Ordered event adds 1 to its order's row, so an effect applied twice shows as 2.
An event for item "poison" always fails.

    python -m tests.support.counting_consumer --database-url URL --nats-url URL
        --nats-nkey-file FILE

It is NATS user `counter` (tests/support/nats_server.py), granted its durable consumer only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from nats.aio.msg import Msg
from phoneseller.order.v1 import events_pb2
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select, update

from services.kit import logs, tables
from services.kit.bus import EventBus
from services.kit.consumer import ConsumerSettings, EventConsumer
from services.kit.db import Database
from services.kit.events import Envelope, EventTypes
from services.kit.sql import Statement, insert_row
from services.kit.uow import UnitOfWork

metadata = MetaData()
effects = Table(
    "effects",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)


_COUNT = Statement(select(effects.c.count).where(effects.c.order_id == bindparam("order_id")))
_FIRST = insert_row(effects)
_ONE_MORE = Statement(
    update(effects).where(effects.c.order_id == bindparam("order_id")).values(count=bindparam("n"))
)


async def count_effect(uow: UnitOfWork, event: Message, envelope: Envelope) -> None:
    fields: Any = event
    if fields.item == "poison":
        raise RuntimeError("poison pill: this event can never be handled")
    current = await uow.session.scalar(_COUNT, order_id=envelope.order_id)
    if current is None:
        await uow.session.execute(_FIRST, order_id=envelope.order_id, count=1)
    else:
        await uow.session.execute(_ONE_MORE, order_id=envelope.order_id, n=current + 1)


class CrashBeforeFirstAck(EventConsumer):
    """Dies right after its first batch committed and before it is acknowledged."""

    async def acknowledge(self, messages: Sequence[Msg]) -> None:
        os._exit(17)


async def main(args: argparse.Namespace) -> int:
    database = Database(args.database_url, tables.metadata, metadata)
    await database.open()
    bus = EventBus(args.nats_url, name="counter", nkey_file=args.nats_nkey_file)
    consumer_class = CrashBeforeFirstAck if args.crash_before_first_ack else EventConsumer
    consumer = consumer_class(
        "counter",
        bus,
        EventTypes([events_pb2.Ordered]),
        count_effect,
        lambda: UnitOfWork(database),
        ConsumerSettings(
            batch_size=args.batch_size,
            max_attempts=args.max_attempts,
            ack_wait_seconds=args.ack_wait,
            backoff_seconds=(0.05, 0.1),
        ),
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(bus.connect()), asyncio.create_task(consumer.run())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await bus.close()
    await database.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--nats-nkey-file", required=True)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    # Short, so that what a killed consumer had in flight comes back quickly in tests.
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--crash-before-first-ack", action="store_true")
    arguments = parser.parse_args()
    logs.configure("counter", "INFO")
    sys.exit(asyncio.run(main(arguments)))
