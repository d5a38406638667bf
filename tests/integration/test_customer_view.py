"""The customer view service with a real nats-server: it converges, dedupes, and rebuilds.

Events are published the way the services' outbox relays publish them (`envelope_for`, headers
with `Nats-Msg-Id` = event id); the view is polled over gRPC until it equals the pure
projection of what was published, with deadlines, never bare sleeps.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import JetStreamContext
from phoneseller.customer.v1 import customer_service_pb2 as pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as pb_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb
from sqlalchemy import func, select

from services.customer.repository import CustomerUnitOfWork, metadata
from services.customer.servicer import to_proto
from services.kit import tables
from services.kit.bus import stream_config
from services.kit.db import Database
from services.kit.events import MSG_ID, STREAM, envelope_for
from services.kit.sql import Statement
from tests.support.identity import as_customer, as_operator
from tests.support.nats_server import NatsServer
from tests.support.processes import REPO, ServiceProcess
from tests.support.saga_events import T0, expected_history, saga
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

CONVERGE_SECONDS = 15.0
HOUR = timedelta(hours=1)


@pytest.fixture
def customer(nats_server: NatsServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("customer", tmp_path / "live", nats_server).start()
    yield service
    service.stop()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await nats_server.connect()
    jetstream = client.jetstream()
    await jetstream.add_stream(stream_config())
    yield jetstream
    await client.close()


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


async def publish(js: JetStreamContext, *events: Message, msg_id: str | None = None) -> None:
    """Publish as an outbox relay does; `msg_id` overrides JetStream's de-duplication key."""
    for event in events:
        envelope = envelope_for(event)
        headers = envelope.headers()
        if msg_id is not None:
            headers[MSG_ID] = msg_id
        ack = await js.publish(envelope.subject, envelope.payload, headers=headers)
        assert not ack.duplicate, "JetStream refused the copy; the view would never see it"


async def get_history(address: str, customer_id: str) -> pb.CustomerHistory:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CustomerServiceStub(channel)
        history: pb.CustomerHistory = await stub.GetCustomerHistory(
            pb.GetCustomerHistoryRequest(customer_id=customer_id),
            timeout=5,
            metadata=as_customer(customer_id),
        )
        return history


async def converge(address: str, expected: pb.CustomerHistory) -> pb.CustomerHistory:
    """Poll until the view shows `expected`; on timeout, show what it showed last."""
    last: list[pb.CustomerHistory] = []

    async def probe() -> bool:
        seen = await get_history(address, expected.customer_id)
        last[:] = [seen]
        return seen == expected

    try:
        await eventually(probe, timeout=CONVERGE_SECONDS, message="the view to converge")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nexpected:\n{expected}\nlast seen:\n{last}") from None
    return last[0]


async def view_until(
    address: str, customer_id: str, check: str, predicate: Callable[[pb.CustomerHistory], object]
) -> pb.CustomerHistory:
    async def probe() -> pb.CustomerHistory | None:
        seen = await get_history(address, customer_id)
        return seen if predicate(seen) else None

    found = await eventually(probe, timeout=CONVERGE_SECONDS, message=check)
    assert found is not None
    return found


def expected(customer_id: str, events: list[Message]) -> pb.CustomerHistory:
    return to_proto(expected_history(customer_id, events))


async def consumer_caught_up(js: JetStreamContext, name: str = "customer") -> None:
    """Wait until the durable consumer has acknowledged everything in the stream."""

    async def probe() -> bool:
        stream = await js.stream_info(STREAM)
        info = await js.consumer_info(STREAM, name)
        return bool(
            info.ack_floor is not None
            and info.ack_floor.stream_seq >= stream.state.last_seq
            and not info.num_ack_pending
        )

    await eventually(probe, timeout=CONVERGE_SECONDS, message=f"consumer {name} caught up")


async def test_happy_path(customer: ServiceProcess, js: JetStreamContext) -> None:
    customer_id = new_customer()
    events = saga("happy", customer_id=customer_id)
    await publish(js, *events)
    history = await converge(customer.address, expected(customer_id, events))

    (order,) = history.orders
    assert order.status == order_pb.ORDER_STATUS_SHIPPED
    assert order.payment_status == payment_pb.PAYMENT_STATUS_PAID
    assert order.store_status == store_pb.STORE_ORDER_STATUS_SHIPPED
    assert (order.amount, order.points_granted, history.point_balance) == (
        1_200_000,
        120_000,
        120_000,
    )
    assert [e.event_type for e in order.timeline] == [
        "Ordered",
        "PayCompleted",
        "PromoCompleted",
        "Shipped",
    ]
    assert order.timeline[1].description == "paid 1,200,000 won"
    assert order.timeline[2].description == "120,000 points granted"
    assert order.create_time.ToDatetime(tzinfo=UTC) == T0


async def test_cancel_path(customer: ServiceProcess, js: JetStreamContext) -> None:
    customer_id = new_customer()
    kept = saga("happy", customer_id=customer_id)
    cancelled_id = f"order-{uuid.uuid4().hex[:12]}"
    cancelled = saga("cancel", customer_id=customer_id, order_id=cancelled_id, start=T0 + HOUR)
    await publish(js, *kept, *cancelled)
    history = await converge(customer.address, expected(customer_id, kept + cancelled))

    newest, oldest = history.orders
    assert newest.order_id == cancelled_id
    assert newest.status == order_pb.ORDER_STATUS_CANCELLED
    assert newest.payment_status == payment_pb.PAYMENT_STATUS_CANCELLED
    assert newest.store_status == store_pb.STORE_ORDER_STATUS_CANCELLED
    assert (newest.points_granted, newest.points_reversed) == (120_000, 120_000)
    assert oldest.status == order_pb.ORDER_STATUS_SHIPPED
    assert history.point_balance == 120_000


async def test_decline_path(customer: ServiceProcess, js: JetStreamContext) -> None:
    customer_id = new_customer()
    events = saga("decline", customer_id=customer_id, unit_price=9_000_000, quantity=1)
    await publish(js, *events)
    history = await converge(customer.address, expected(customer_id, events))

    (order,) = history.orders
    assert order.status == order_pb.ORDER_STATUS_PAYMENT_DECLINED
    assert order.payment_status == payment_pb.PAYMENT_STATUS_DECLINED
    assert order.store_status == store_pb.STORE_ORDER_STATUS_UNSPECIFIED
    assert history.point_balance == 0
    assert order.timeline[-1].description == ("payment of 9,000,000 won declined: above the limit")


async def test_events_delivered_in_reverse_order(
    customer: ServiceProcess, js: JetStreamContext
) -> None:
    customer_id = new_customer()
    ordered, paid, points, shipped = saga("happy", customer_id=customer_id)

    await publish(js, paid)
    early = await view_until(
        customer.address, customer_id, "the payment before its order", lambda h: h.orders
    )
    assert early.orders[0].status == order_pb.ORDER_STATUS_PAID
    assert early.orders[0].item == ""  # not known until Ordered arrives

    await publish(js, shipped)
    await view_until(
        customer.address,
        customer_id,
        "shipped before ordered",
        lambda h: h.orders[0].status == order_pb.ORDER_STATUS_SHIPPED,
    )

    await publish(js, ordered, points)  # the oldest event last: the status must not go back
    history = await converge(
        customer.address, expected(customer_id, [ordered, paid, points, shipped])
    )
    order = history.orders[0]
    assert order.status == order_pb.ORDER_STATUS_SHIPPED
    assert order.item == "Galaxy S24"
    assert [e.event_type for e in order.timeline] == [
        "Ordered",
        "PayCompleted",
        "PromoCompleted",
        "Shipped",
    ]


async def test_an_event_published_twice_counts_once(
    customer: ServiceProcess, js: JetStreamContext
) -> None:
    customer_id = new_customer()
    events = saga("happy", customer_id=customer_id)
    await publish(js, *events)
    await converge(customer.address, expected(customer_id, events))

    grant = events[2]
    # A second copy under another Nats-Msg-Id: JetStream stores it, so the view must drop it.
    await publish(js, grant, msg_id=f"copy-{uuid.uuid4()}")
    # ... and two more copies in one batch, together with a new event.
    later = saga("happy", customer_id=customer_id, start=T0 + HOUR)
    await publish(js, grant, msg_id=f"copy-{uuid.uuid4()}")
    await publish(js, later[0], msg_id=f"copy-{uuid.uuid4()}")
    await publish(js, later[0], *later[1:])
    await consumer_caught_up(js)

    history = await get_history(customer.address, customer_id)
    assert history == expected(customer_id, events + later)
    assert [len(o.timeline) for o in history.orders] == [4, 4]
    assert history.point_balance == 240_000
    assert history.orders[1].points_granted == 120_000


async def test_bad_input_is_invalid_argument_with_field_violations(
    customer: ServiceProcess,
) -> None:
    with grpc.insecure_channel(customer.address) as channel:
        stub = pb_grpc.CustomerServiceStub(channel)
        for bad in ("", "has space", "x" * 65, "semi;colon"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetCustomerHistory(
                    pb.GetCustomerHistoryRequest(customer_id=bad),
                    timeout=5,
                    metadata=as_operator(),
                )
            call = caught.value
            assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(call)
            assert status is not None
            details: dict[str, Message] = {}
            for detail in status.details:
                for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
                    if detail.Is(kind.DESCRIPTOR):
                        unpacked = kind()
                        detail.Unpack(unpacked)
                        details[kind.DESCRIPTOR.name] = unpacked
            info = details["ErrorInfo"]
            assert isinstance(info, error_details_pb2.ErrorInfo)
            assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "phoneseller")
            assert info.metadata["service"] == "customer"
            bad_request = details["BadRequest"]
            assert isinstance(bad_request, error_details_pb2.BadRequest)
            assert [v.field for v in bad_request.field_violations] == ["customer_id"]

        unknown = stub.GetCustomerHistory(
            pb.GetCustomerHistoryRequest(customer_id="never-seen"),
            timeout=5,
            metadata=as_customer("never-seen"),
        )
        assert unknown == pb.CustomerHistory(customer_id="never-seen")


def run_rebuild(
    database_url: str, nats_server: NatsServer, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The rebuild as an operator runs it: with the customer service's NATS credentials."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.customer.rebuild",
            "--database-url",
            database_url,
            "--nats-url",
            nats_server.url,
            "--nats-nkey-file",
            nats_server.nkey_file("customer"),
            "--json",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def read_view(database_url: str, customer_id: str) -> pb.CustomerHistory:
    database = Database(database_url, tables.metadata, metadata)
    await database.open()
    try:
        async with CustomerUnitOfWork(database).reading() as uow:
            return to_proto(await uow.views.history(customer_id))
    finally:
        await database.close()


async def count_parked(database_url: str) -> int:
    database = Database(database_url, tables.metadata, metadata)
    await database.open()
    try:
        async with CustomerUnitOfWork(database).reading() as uow:
            count = await uow.session.scalar(
                Statement(select(func.count()).select_from(tables.dead_letters))
            )
            return int(count or 0)
    finally:
        await database.close()


async def test_rebuild_by_replay_equals_the_live_view_and_swaps_in(
    customer: ServiceProcess, js: JetStreamContext, nats_server: NatsServer, tmp_path: Path
) -> None:
    alice, bob = new_customer(), new_customer()
    first = [
        *saga("happy", customer_id=alice),
        *saga("cancel", customer_id=alice, start=T0 + HOUR),
        *saga("decline", customer_id=bob),
    ]
    await publish(js, *first)
    await publish(js, first[1], msg_id="republished")  # a copy in the stream
    for who in (alice, bob):
        await converge(customer.address, expected(who, first))
    await consumer_caught_up(js)

    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt' / 'customer.db'}"
    # Small batches, so that the copy lands in another batch than its original.
    done = await asyncio.to_thread(run_rebuild, rebuilt_url, nats_server, "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["applied"] == len(first)
    assert report["duplicates"] == 1
    assert (report["from_sequence"], report["to_sequence"]) == (1, len(first) + 1)
    for who in (alice, bob):
        assert await read_view(rebuilt_url, who) == await get_history(customer.address, who)

    # The live database is refused: it holds a view the command did not build.
    live_url = f"sqlite:///{customer.run_dir / 'data' / 'customer.db'}"
    refused = await asyncio.to_thread(run_rebuild, live_url, nats_server)
    assert refused.returncode == 1
    assert "did not build" in refused.stderr

    # The swap (docs/customer-view.md): events keep coming, the live service stops, a second
    # run closes the gap, the service starts on the rebuilt database.
    second = saga("happy", customer_id=bob, start=T0 + 2 * HOUR)
    await publish(js, *second[:2])
    await consumer_caught_up(js)
    customer.stop()
    await publish(js, *second[2:])  # nobody consumes these until the swap
    gap = await asyncio.to_thread(run_rebuild, rebuilt_url, nats_server)
    assert gap.returncode == 0, gap.stderr
    assert json.loads(gap.stdout)["applied"] == len(second)
    assert json.loads(gap.stdout)["from_sequence"] == len(first) + 2

    swapped = ServiceProcess(
        "customer",
        tmp_path / "swapped",
        nats_server,
        env={"PHONESELLER_DATABASE_URL": rebuilt_url},
    ).start()
    try:
        third = saga("cancel", customer_id=alice, start=T0 + 3 * HOUR)
        await publish(js, *third)
        everything = first + second + third
        for who in (alice, bob):
            await converge(swapped.address, expected(who, everything))
        await consumer_caught_up(js)
        for who in (alice, bob):
            assert await get_history(swapped.address, who) == expected(who, everything)
        # The events the rebuild had already applied came again through the durable consumer
        # and were dropped as copies, not failed and parked.
        assert await count_parked(rebuilt_url) == 0
    finally:
        swapped.stop()
