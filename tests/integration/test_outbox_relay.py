"""The outbox relay publishes every committed event exactly once, through SIGKILLs."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from phoneseller.order.v1 import events_pb2

from services.kit import tables
from services.kit.db import Database
from services.kit.events import Envelope, EventTypes, envelope_for, new_event
from services.kit.sql import insert_row
from tests.support.announcements import Announcement, AnnouncingUnitOfWork
from tests.support.jetstream import stream_count, stream_messages
from tests.support.nats_server import NatsServer
from tests.support.processes import REPO
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

EVENTS = 10_000
PER_TRANSACTION = 10
KILLS = 5


class RelayProcess:
    def __init__(self, database_url: str, nats: NatsServer, log_path: Path) -> None:
        # The relay of order's outbox publishes as order: NATS lets nobody else.
        self.args = [
            sys.executable,
            "-m",
            "services.kit.tools",
            "relay",
            "--service",
            "order",
            "--database-url",
            database_url,
            "--nats-url",
            nats.url,
            "--nats-nkey-file",
            nats.nkey_file("order"),
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, cwd=REPO, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def pending_count(path: Path) -> int:
    """Rows the relay has not published yet (it deletes what JetStream acknowledged)."""
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def test_every_event_published_once_while_the_relay_is_killed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    db_path = tmp_path / "outbox.db"
    url = f"sqlite:///{db_path}"
    database = Database(url, tables.metadata)
    await database.open()
    relay = RelayProcess(url, nats_server, tmp_path / "relay.log")
    relay.start()
    committed: list[str] = []

    async def write() -> None:
        for batch in range(EVENTS // PER_TRANSACTION):
            async with AnnouncingUnitOfWork(database) as uow:
                events = [
                    new_event(
                        events_pb2.Ordered,
                        order_id=f"o-{batch}-{i}",
                        customer_id="c",
                        item="phone",
                        quantity=1,
                        unit_price=10,
                        amount=10,
                    )
                    for i in range(PER_TRANSACTION)
                ]
                await uow.announcements.save(Announcement(*events))
                await uow.commit()
            committed.extend(e.event_id for e in events)

    async def published_so_far() -> int:
        try:
            return await stream_count(nats_server)
        except NotFoundError:  # the relay has not created the stream yet
            return 0

    async def kill_repeatedly() -> int:
        kills = 0
        for _ in range(KILLS):
            before = await published_so_far()

            async def progressed(before: int = before) -> bool:
                return await published_so_far() > before

            # Kill only once the relay has made progress, so each life publishes something.
            await eventually(progressed, timeout=60, message="relay progress")
            relay.kill()
            kills += 1
            relay.start()
        return kills

    writer = asyncio.create_task(write())
    kills = await kill_repeatedly()
    await writer
    assert kills == KILLS
    await eventually(
        lambda: asyncio.to_thread(lambda: pending_count(db_path) == 0),
        timeout=60,
        message="outbox drained",
    )
    assert relay.stop() == 0

    assert await stream_count(nats_server) == EVENTS
    messages = await stream_messages(nats_server)
    ids = [m.headers["Nats-Msg-Id"] for m in messages if m.headers]
    assert len(ids) == EVENTS
    assert set(ids) == set(committed), "stream holds exactly the committed events"

    # A relay that died after publishing and before deleting finds its rows again: put the
    # last 500 published events back (the newest, well inside JetStream's duplicate window)
    # and their republished copies are refused.
    ordered = EventTypes([events_pb2.Ordered])
    again = [
        envelope_for(ordered.decode(Envelope.from_message(m.subject, m.headers, m.data)))
        for m in messages[-500:]
    ]
    async with AnnouncingUnitOfWork(database) as uow:
        await uow.session.execute_many(
            insert_row(tables.outbox), [e.outbox_row(database.writer_id) for e in again]
        )
        await uow.commit()
    relay.start()
    await eventually(
        lambda: asyncio.to_thread(lambda: pending_count(db_path) == 0),
        timeout=60,
        message="republished rows deleted",
    )
    assert relay.stop() == 0
    assert await stream_count(nats_server) == EVENTS
    assert '"duplicates_refused": 500' in relay.log_path.read_text()
    await database.close()
