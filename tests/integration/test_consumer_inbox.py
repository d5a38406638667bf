"""Consumers apply each event once through redeliveries, and park what keeps failing."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from phoneseller.order.v1 import events_pb2

from services.kit.bus import stream_config
from services.kit.events import envelope_for, new_event
from tests.support.nats_server import NatsServer
from tests.support.processes import REPO
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


class CounterProcess:
    def __init__(self, db_path: Path, server: NatsServer, *extra: str) -> None:
        self.args = [
            sys.executable,
            "-m",
            "tests.support.counting_consumer",
            "--database-url",
            f"sqlite:///{db_path}",
            "--nats-url",
            server.url,
            "--nats-nkey-file",
            server.nkey_file("counter"),
            *extra,
        ]
        self.log_path = db_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> CounterProcess:
        self.process = subprocess.Popen(
            [*self.args, *extra],
            cwd=REPO,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=20)


async def publish_orders(server: NatsServer, order_ids: list[str], item: str = "phone") -> None:
    """Publish Ordered events as the order service does, with its NATS user."""
    client = await server.connect("order")
    js = client.jetstream()
    await js.add_stream(stream_config())
    envelopes = [
        envelope_for(
            new_event(
                events_pb2.Ordered,
                order_id=order_id,
                customer_id="c",
                item=item,
                quantity=1,
                unit_price=1,
                amount=1,
            )
        )
        for order_id in order_ids
    ]
    for envelope in envelopes:
        await js.publish(envelope.subject, envelope.payload, headers=envelope.headers())
    await client.close()


def query(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    try:
        with sqlite3.connect(db_path) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def effect_total(db_path: Path) -> int:
    rows = query(db_path, "SELECT count(*), coalesce(sum(count), 0) FROM effects")
    return int(rows[0][1]) if rows else 0  # type: ignore[call-overload]


async def test_redelivered_events_change_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    db_path = tmp_path / "counter.db"
    orders = [f"order-{i}" for i in range(3000)]
    await publish_orders(nats_server, orders)

    # 1. Crash after committing the first batch and before acknowledging it.
    counter = CounterProcess(db_path, nats_server, "--batch-size", "100")
    counter.start("--crash-before-first-ack")
    assert counter.process is not None
    assert counter.process.wait(timeout=30) == 17
    # The first batch is whatever had arrived (events stream in), at most --batch-size.
    first_batch = effect_total(db_path)
    assert 0 < first_batch <= 100, "the first batch committed, then the process died"

    # 2. Kill the consumer repeatedly while it works, and restart nats-server under it.
    counter.start()
    for round_ in range(4):
        floor = effect_total(db_path)

        async def progressed(floor: int = floor) -> bool:
            return await asyncio.to_thread(lambda: effect_total(db_path) > floor)

        await eventually(progressed, timeout=30, message="consumer progress")
        if round_ == 2:
            nats_server.restart()
        else:
            counter.kill()
            counter.start()
    await eventually(
        lambda: asyncio.to_thread(lambda: effect_total(db_path) == len(orders)),
        timeout=60,
        message="every event applied",
    )
    counter.stop()

    rows = query(db_path, "SELECT order_id, count FROM effects")
    assert len(rows) == len(orders)
    assert {count for _, count in rows} == {1}, "no effect applied twice"
    assert query(db_path, "SELECT count(*) FROM inbox")[0][0] == len(orders)


async def test_a_poison_event_is_parked_and_the_rest_flow(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    db_path = tmp_path / "counter.db"
    await publish_orders(nats_server, ["before-1", "before-2"])
    await publish_orders(nats_server, ["bad-one"], item="poison")
    await publish_orders(nats_server, [f"after-{i}" for i in range(50)])
    counter = CounterProcess(db_path, nats_server, "--max-attempts", "3").start()
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: effect_total(db_path) == 52),
            timeout=30,
            message="the events around the poison one",
        )
        parked = await eventually(
            lambda: asyncio.to_thread(
                lambda: query(db_path, "SELECT order_id, error, deliveries FROM dead_letters")
            ),
            timeout=30,
            message="the poison event parked",
        )
    finally:
        counter.stop()
    assert len(parked) == 1
    order_id, error, deliveries = parked[0]
    assert order_id == "bad-one"
    assert "poison pill" in str(error)
    assert deliveries == 3
    assert query(db_path, "SELECT count FROM effects WHERE order_id = 'bad-one'") == []
