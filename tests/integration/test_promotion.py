"""The promotion service as a real process: PayCompleted events in, points and events out.

One nats-server and one service process per database backend serve the whole module; every
test works on its own orders and customers. Events go in as the payment service publishes
them (JetStream, with the kit's envelope) and what promotion publishes is read back from the
stream. Each backend runs every test: SQLite, and PostgreSQL when a server answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from nats.js import JetStreamContext
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.promotion.v1 import promotion_service_pb2 as pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as pb_grpc

from services.kit.bus import stream_config
from services.kit.events import EventTypes, new_event
from tests.support.identity import as_customer, as_operator
from tests.support.jetstream import events_about, publish_events
from tests.support.nats_server import NatsServer
from tests.support.postgres import fresh_database
from tests.support.processes import ServiceProcess
from tests.support.rich_errors import unpack_status
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

PROMOTION_EVENTS = EventTypes([promotion_events.PromoCompleted, promotion_events.PromoCancelled])
GRANT = pb.LEDGER_ENTRY_KIND_GRANT
REVERSAL = pb.LEDGER_ENTRY_KIND_REVERSAL
REVERSED = pb.POINT_GRANT_STATUS_REVERSED


@dataclass(frozen=True)
class Promotion:
    address: str
    nats: NatsServer
    process: ServiceProcess


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def promotion(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Promotion]:
    run_dir: Path = tmp_path_factory.mktemp(f"promotion-{request.param}")
    with ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(fresh_database("promotion", request))
        else:
            url = f"sqlite:///{run_dir / 'promotion.db'}"
        server = NatsServer(run_dir / "jetstream").start()
        stack.callback(server.stop)
        process = ServiceProcess(
            "promotion", run_dir, server, env={"PHONESELLER_DATABASE_URL": url}
        ).start()
        stack.callback(process.stop)
        print(f"promotion on {request.param}: log {process.log_path}")
        yield Promotion(process.address, server, process)


@pytest.fixture
async def stub(promotion: Promotion) -> AsyncIterator[pb_grpc.PromotionServiceStub]:
    async with grpc.aio.insecure_channel(promotion.address) as channel:
        yield pb_grpc.PromotionServiceStub(channel)


@pytest.fixture
async def js(promotion: Promotion) -> AsyncIterator[JetStreamContext]:
    client = await promotion.nats.connect()
    context = client.jetstream()
    await context.add_stream(stream_config())  # exists already: the service made it
    yield context
    await client.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def pay_completed(order_id: str, customer_id: str, amount: int) -> payment_events.PayCompleted:
    return new_event(
        payment_events.PayCompleted,
        order_id=order_id,
        customer_id=customer_id,
        payment_id=uid("pay"),
        amount=amount,
    )


publish = publish_events


async def published(js: JetStreamContext, order_id: str) -> list[Message]:
    """What promotion published about an order, oldest first."""
    return await events_about(js, "phoneseller.promotion.>", PROMOTION_EVENTS, order_id)


def summary(events: list[Message]) -> list[tuple[str, int]]:
    result = []
    for event in events:
        if isinstance(event, promotion_events.PromoCompleted):
            result.append(("PromoCompleted", event.points))
        elif isinstance(event, promotion_events.PromoCancelled):
            result.append(("PromoCancelled", event.points_reversed))
    return result


async def entries_of(
    stub: pb_grpc.PromotionServiceStub, customer_id: str, order_id: str
) -> list[tuple[int, int]]:
    balance = await stub.GetPointBalance(
        pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
    )
    return [(e.kind, e.points) for e in balance.entries if e.order_id == order_id]


async def barrier(stub: pb_grpc.PromotionServiceStub, js: JetStreamContext) -> None:
    """Wait until everything published before now was consumed and its effects published.

    The consumer applies events in stream order and the relay publishes in commit order, so
    once a later payment's points are in the stream, nothing earlier is still on its way.
    """
    order_id, customer_id = uid("barrier"), uid("c")
    await publish(js, pay_completed(order_id, customer_id, 100))

    async def through() -> bool:
        return summary(await published(js, order_id)) == [("PromoCompleted", 10)]

    await eventually(through, timeout=15, message="the barrier payment's PromoCompleted")


async def test_payment_grants_ten_percent_of_the_amount_rounded_down(
    stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    event = pay_completed(order_id, customer_id, 12_345)

    await publish(js, event)

    async def granted() -> pb.PointBalance | None:
        balance = await stub.GetPointBalance(
            pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
        )
        return balance if balance.entries else None

    balance = await eventually(granted, timeout=15, message="the grant")
    assert balance is not None
    assert balance.customer_id == customer_id
    assert balance.balance == 1_234
    [entry] = balance.entries
    assert (entry.order_id, entry.kind, entry.points) == (order_id, GRANT, 1_234)
    assert entry.entry_id
    assert entry.create_time.seconds > 0

    async def announced() -> list[Message]:
        return await published(js, order_id)

    [completed] = await eventually(announced, timeout=15, message="PromoCompleted")
    assert isinstance(completed, promotion_events.PromoCompleted)
    assert (completed.order_id, completed.customer_id, completed.points) == (
        order_id,
        customer_id,
        1_234,
    )


def problems_logged(promotion: Promotion, order_id: str) -> list[str]:
    """Warnings and errors the service logged about an order (e.g. an event that failed)."""
    return [
        line
        for line in promotion.process.log_tail(1_000_000).splitlines()
        if order_id in line and ('"level": "WARNING"' in line or '"level": "ERROR"' in line)
    ]


async def test_a_payment_seen_twice_is_granted_once(
    promotion: Promotion, stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    event = pay_completed(order_id, customer_id, 50_000)

    await publish(js, event)
    # The very same event again (a relay republishing after a crash, past JetStream's
    # de-duplication), and another event for the same order (a payment retried upstream).
    (copy,) = await publish(js, event, dedupe=False)
    assert not copy.duplicate, "JetStream must store the copy for the test to mean anything"
    await publish(js, pay_completed(order_id, customer_id, 50_000))
    await barrier(stub, js)

    assert await entries_of(stub, customer_id, order_id) == [(GRANT, 5_000)]
    balance = await stub.GetPointBalance(
        pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
    )
    assert balance.balance == 5_000
    assert summary(await published(js, order_id)) == [("PromoCompleted", 5_000)]
    assert problems_logged(promotion, order_id) == []  # dropped as duplicates, not failures


async def test_clawback_reverses_the_grant_and_the_balance_goes_back(
    stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    customer_id = uid("c")
    kept, cancelled = uid("o"), uid("o")
    await publish(js, pay_completed(kept, customer_id, 30_000))
    await publish(js, pay_completed(cancelled, customer_id, 12_345))

    async def both_granted() -> bool:
        balance: pb.PointBalance = await stub.GetPointBalance(
            pb.GetPointBalanceRequest(customer_id=customer_id),
            metadata=as_customer(customer_id),
        )
        return balance.balance == 3_000 + 1_234

    await eventually(both_granted, timeout=15, message="both grants")

    grant = await stub.ClawBackPoints(
        pb.ClawBackPointsRequest(order_id=cancelled, customer_id=customer_id, request_id=uid("r"))
    )

    assert grant == pb.PointGrant(
        order_id=cancelled,
        customer_id=customer_id,
        points_granted=1_234,
        points_reversed=1_234,
        status=REVERSED,
    )
    balance = await stub.GetPointBalance(
        pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
    )
    assert balance.balance == 3_000
    assert [(e.order_id, e.kind, e.points) for e in balance.entries][-1] == (
        cancelled,
        REVERSAL,
        -1_234,
    )
    assert await entries_of(stub, customer_id, cancelled) == [(GRANT, 1_234), (REVERSAL, -1_234)]

    async def announced() -> bool:
        return summary(await published(js, cancelled)) == [
            ("PromoCompleted", 1_234),
            ("PromoCancelled", 1_234),
        ]

    await eventually(announced, timeout=15, message="PromoCancelled")


async def test_clawback_twice_reverses_once(
    stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    await publish(js, pay_completed(order_id, customer_id, 10_000))

    async def granted() -> bool:
        return await entries_of(stub, customer_id, order_id) == [(GRANT, 1_000)]

    await eventually(granted, timeout=15, message="the grant")
    request = pb.ClawBackPointsRequest(order_id=order_id, customer_id=customer_id)

    first = await stub.ClawBackPoints(request)
    # A retry, and calls racing each other: still one reversal.
    again = await asyncio.gather(*(stub.ClawBackPoints(request) for _ in range(8)))

    assert all(grant == first for grant in again)
    assert (first.status, first.points_reversed) == (REVERSED, 1_000)
    assert await entries_of(stub, customer_id, order_id) == [(GRANT, 1_000), (REVERSAL, -1_000)]
    await barrier(stub, js)
    assert summary(await published(js, order_id)) == [
        ("PromoCompleted", 1_000),
        ("PromoCancelled", 1_000),
    ]


async def test_concurrent_clawbacks_of_one_granted_order_reverse_once(
    stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    await publish(js, pay_completed(order_id, customer_id, 20_000))

    async def granted() -> bool:
        return await entries_of(stub, customer_id, order_id) == [(GRANT, 2_000)]

    await eventually(granted, timeout=15, message="the grant")
    request = pb.ClawBackPointsRequest(order_id=order_id, customer_id=customer_id)

    grants = await asyncio.gather(*(stub.ClawBackPoints(request) for _ in range(10)))

    assert {(g.status, g.points_granted, g.points_reversed) for g in grants} == {
        (REVERSED, 2_000, 2_000)
    }
    assert await entries_of(stub, customer_id, order_id) == [(GRANT, 2_000), (REVERSAL, -2_000)]


async def test_clawback_before_the_grant_makes_the_late_grant_net_zero(
    promotion: Promotion, stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    request = pb.ClawBackPointsRequest(order_id=order_id, customer_id=customer_id)

    # The cancel raced ahead of the PayCompleted event, and is retried concurrently.
    early = await asyncio.gather(*(stub.ClawBackPoints(request) for _ in range(5)))

    assert set(map(bytes, map(pb.PointGrant.SerializeToString, early))) == {
        pb.PointGrant(
            order_id=order_id,
            customer_id=customer_id,
            points_granted=0,
            points_reversed=0,
            status=REVERSED,
        ).SerializeToString()
    }
    assert await entries_of(stub, customer_id, order_id) == []

    await publish(js, pay_completed(order_id, customer_id, 12_345))

    async def net_zero() -> bool:
        return await entries_of(stub, customer_id, order_id) == [
            (GRANT, 1_234),
            (REVERSAL, -1_234),
        ]

    await eventually(net_zero, timeout=15, message="the late grant and its reversal")
    balance = await stub.GetPointBalance(
        pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
    )
    assert balance.balance == 0
    again = await stub.ClawBackPoints(request)
    assert (again.status, again.points_granted, again.points_reversed) == (REVERSED, 1_234, 1_234)
    # The same payment again: still net zero, nothing more published.
    await publish(js, pay_completed(order_id, customer_id, 12_345))
    await barrier(stub, js)
    assert await entries_of(stub, customer_id, order_id) == [(GRANT, 1_234), (REVERSAL, -1_234)]
    assert summary(await published(js, order_id)) == [
        ("PromoCancelled", 0),
        ("PromoCompleted", 1_234),
        ("PromoCancelled", 1_234),
    ]
    assert problems_logged(promotion, order_id) == []


async def test_unknown_customer_has_balance_zero(stub: pb_grpc.PromotionServiceStub) -> None:
    customer_id = uid("nobody")

    balance = await stub.GetPointBalance(
        pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_customer(customer_id)
    )

    assert balance == pb.PointBalance(customer_id=customer_id, balance=0)


def rich_error(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[Message]]:
    info, others = unpack_status(error)
    assert info.metadata["service"] == "promotion"
    return info, others


def violated_fields(details: list[Message]) -> set[str]:
    [bad_request] = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field for v in bad_request.field_violations}


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.ClawBackPointsRequest(), {"order_id", "customer_id"}),
        (
            pb.ClawBackPointsRequest(
                order_id="o/1", customer_id="x" * 65, request_id="not a valid id"
            ),
            {"order_id", "customer_id", "request_id"},
        ),
        (
            pb.ClawBackPointsRequest(order_id="o-1", customer_id="c-1", request_id="r" * 65),
            {"request_id"},
        ),
    ],
)
async def test_bad_clawback_requests_are_invalid_argument_with_field_violations(
    stub: pb_grpc.PromotionServiceStub, request_: pb.ClawBackPointsRequest, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ClawBackPoints(request_)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, details = rich_error(caught.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert violated_fields(details) == fields


@pytest.mark.parametrize("customer_id", ["", "spaces are bad", "ü" * 3, "c" * 65])
async def test_bad_balance_requests_are_invalid_argument(
    stub: pb_grpc.PromotionServiceStub, customer_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPointBalance(
            pb.GetPointBalanceRequest(customer_id=customer_id), metadata=as_operator()
        )

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, details = rich_error(caught.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert violated_fields(details) == {"customer_id"}


async def test_clawback_for_another_customer_is_refused_and_changes_nothing(
    stub: pb_grpc.PromotionServiceStub, js: JetStreamContext
) -> None:
    order_id, customer_id = uid("o"), uid("c")
    await publish(js, pay_completed(order_id, customer_id, 10_000))

    async def granted() -> bool:
        return await entries_of(stub, customer_id, order_id) == [(GRANT, 1_000)]

    await eventually(granted, timeout=15, message="the grant")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ClawBackPoints(
            pb.ClawBackPointsRequest(order_id=order_id, customer_id=uid("someone-else"))
        )

    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    info, _ = rich_error(caught.value)
    assert info.reason == "POINT_GRANT_OTHER_CUSTOMER"
    assert await entries_of(stub, customer_id, order_id) == [(GRANT, 1_000)]
