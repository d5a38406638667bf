"""The store service as a real process: order and payment events in, dealer orders and
Shipped events out.

One nats-server and one service process per database backend serve the tests of a fixture
(auto-ship off, and auto-ship on with a short delay); every test works on its own orders.
Events go in as the order and payment services publish them (JetStream, with the kit's
envelope); what the store publishes is read back from the stream. Each backend runs every
test: SQLite, and PostgreSQL when a server answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from nats.js import JetStreamContext
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.store.v1 import events_pb2 as store_events
from phoneseller.store.v1 import store_service_pb2 as pb
from phoneseller.store.v1 import store_service_pb2_grpc as pb_grpc

from services.kit.bus import stream_config
from services.kit.events import EventTypes, new_event
from tests.support.identity import as_dealer
from tests.support.jetstream import events_about, publish_events
from tests.support.nats_server import NatsServer
from tests.support.postgres import fresh_database
from tests.support.processes import ServiceProcess
from tests.support.rich_errors import unpack_status
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

STORE_EVENTS = EventTypes([store_events.Shipped])
RECEIVED = pb.STORE_ORDER_STATUS_RECEIVED
SHIPPED = pb.STORE_ORDER_STATUS_SHIPPED
CANCELLED = pb.STORE_ORDER_STATUS_CANCELLED
AUTO_SHIP_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class Store:
    address: str
    nats: NatsServer
    process: ServiceProcess


def start_store(
    request: pytest.FixtureRequest, stack: ExitStack, run_dir: Path, env: dict[str, str]
) -> Store:
    backend = request.param
    if backend == "postgresql":
        url = stack.enter_context(fresh_database("store", request))
    else:
        url = f"sqlite:///{run_dir / 'store.db'}"
    server = NatsServer(run_dir / "jetstream").start()
    stack.callback(server.stop)
    process = ServiceProcess(
        "store", run_dir, server, env={"PHONESELLER_DATABASE_URL": url, **env}
    ).start()
    stack.callback(process.stop)
    print(f"store on {backend}: log {process.log_path}")
    return Store(process.address, server, process)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A store with auto-ship off (the default)."""
    with ExitStack() as stack:
        yield start_store(request, stack, tmp_path_factory.mktemp(f"store-{request.param}"), {})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def auto_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A store that ships received orders by itself, AUTO_SHIP_DELAY_SECONDS after payment."""
    with ExitStack() as stack:
        yield start_store(
            request,
            stack,
            tmp_path_factory.mktemp(f"auto-store-{request.param}"),
            {"PHONESELLER_STORE_AUTO_SHIP_DELAY_SECONDS": str(AUTO_SHIP_DELAY_SECONDS)},
        )


@asynccontextmanager
async def connected(
    store: Store,
) -> AsyncIterator[tuple[pb_grpc.StoreServiceStub, JetStreamContext]]:
    client = await store.nats.connect()
    js = client.jetstream()
    await js.add_stream(stream_config())  # exists already: the service made it
    try:
        async with grpc.aio.insecure_channel(store.address) as channel:
            yield pb_grpc.StoreServiceStub(channel), js
    finally:
        await client.close()


@pytest.fixture
async def conn(store: Store) -> AsyncIterator[tuple[pb_grpc.StoreServiceStub, JetStreamContext]]:
    async with connected(store) as both:
        yield both


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Order:
    """The events the order and payment services publish about one order."""

    order_id: str
    customer_id: str
    item: str = "Galaxy S25"
    quantity: int = 2

    @classmethod
    def new(cls, **fields: object) -> Order:
        return cls(uid("o"), uid("c"), **fields)  # type: ignore[arg-type]

    def ordered(self) -> order_events.Ordered:
        return new_event(
            order_events.Ordered,
            order_id=self.order_id,
            customer_id=self.customer_id,
            item=self.item,
            quantity=self.quantity,
            unit_price=1_000_000,
            amount=1_000_000 * self.quantity,
        )

    def pay_completed(self) -> payment_events.PayCompleted:
        return new_event(
            payment_events.PayCompleted,
            order_id=self.order_id,
            customer_id=self.customer_id,
            payment_id=f"pay-{self.order_id}",
            amount=1_000_000 * self.quantity,
        )

    def pay_cancelled(self) -> payment_events.PayCancelled:
        return new_event(
            payment_events.PayCancelled,
            order_id=self.order_id,
            customer_id=self.customer_id,
            payment_id=f"pay-{self.order_id}",
            amount=1_000_000 * self.quantity,
        )


publish = publish_events


async def shipped_events(js: JetStreamContext, order_id: str) -> list[store_events.Shipped]:
    """The Shipped events of an order in the stream."""
    events = await events_about(js, "phoneseller.store.>", STORE_EVENTS, order_id)
    assert all(isinstance(e, store_events.Shipped) for e in events)
    return events  # type: ignore[return-value]


async def listing(
    stub: pb_grpc.StoreServiceStub, status: int = pb.STORE_ORDER_STATUS_UNSPECIFIED
) -> list[pb.StoreOrder]:
    orders: list[pb.StoreOrder] = []
    token = ""
    while True:
        page = await stub.ListStoreOrders(
            pb.ListStoreOrdersRequest(page_size=500, page_token=token, status=status),  # type: ignore[arg-type]
            metadata=as_dealer(),
        )
        orders += page.store_orders
        token = page.next_page_token
        if not token:
            return orders


async def find(stub: pb_grpc.StoreServiceStub, order_id: str) -> pb.StoreOrder | None:
    found = [order for order in await listing(stub) if order.order_id == order_id]
    assert len(found) <= 1, f"{order_id} listed {len(found)} times"
    return found[0] if found else None


async def wait_for(
    stub: pb_grpc.StoreServiceStub, order_id: str, status: int, item: str = ""
) -> pb.StoreOrder:
    async def arrived() -> pb.StoreOrder | None:
        order = await find(stub, order_id)
        if order is not None and order.status == status and order.item == item:
            return order
        return None

    order = await eventually(
        arrived, timeout=15, message=f"{order_id} {pb.StoreOrderStatus.Name(status)}"
    )
    assert order is not None
    return order


async def ship_when_received(stub: pb_grpc.StoreServiceStub, order_id: str) -> pb.StoreOrder:
    async def shipped() -> pb.StoreOrder:
        order: pb.StoreOrder = await stub.ShipOrder(
            pb.ShipOrderRequest(order_id=order_id), metadata=as_dealer()
        )
        return order

    return await eventually(shipped, timeout=15, message=f"ShipOrder({order_id}) succeeding")


async def barrier(stub: pb_grpc.StoreServiceStub, js: JetStreamContext) -> None:
    """Wait until everything published before now was consumed and its effects published.

    The consumer applies events in stream order and the relay publishes in commit order, so
    once a later order has been received, shipped and its Shipped is in the stream, nothing
    earlier is still on its way.
    """
    order = Order.new()
    await publish(js, order.ordered(), order.pay_completed())
    await ship_when_received(stub, order.order_id)

    async def through() -> bool:
        return len(await shipped_events(js, order.order_id)) == 1

    await eventually(through, timeout=15, message="the barrier's Shipped")


def rich_error(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[Message]]:
    info, others = unpack_status(error)
    assert info.metadata["service"] == "store"
    return info, others


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# -- receiving orders ------------------------------------------------------------------------


@pytest.mark.parametrize("paid_first", [False, True], ids=["ordered-first", "paid-first"])
async def test_ordered_and_paid_in_either_order_make_one_listed_received_order(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext], paid_first: bool
) -> None:
    stub, js = conn
    order = Order.new(item="iPhone 17", quantity=3)
    events = [order.ordered(), order.pay_completed()]
    if paid_first:
        events.reverse()

    await publish(js, *events)
    copies = await publish(js, *events, dedupe=False)  # each event delivered twice
    assert not any(ack.duplicate for ack in copies)

    listed = await wait_for(stub, order.order_id, RECEIVED, item="iPhone 17")
    assert (listed.customer_id, listed.quantity) == (order.customer_id, 3)
    assert listed.HasField("create_time")
    assert not listed.HasField("ship_time")
    assert listed in await listing(stub, RECEIVED)
    assert listed not in await listing(stub, SHIPPED)


async def test_an_order_not_paid_is_not_listed_and_cannot_be_shipped(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new()

    await publish(js, order.ordered())
    await barrier(stub, js)

    assert await find(stub, order.order_id) is None
    error = await refused(
        stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    info, _ = rich_error(error)
    assert info.reason == "STORE_ORDER_NOT_FOUND"


async def test_an_unknown_order_is_not_found(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, _ = conn

    error = await refused(
        stub.ShipOrder(pb.ShipOrderRequest(order_id=uid("nothing")), metadata=as_dealer())
    )

    assert error.code() is grpc.StatusCode.NOT_FOUND
    info, details = rich_error(error)
    assert info.reason == "STORE_ORDER_NOT_FOUND"
    assert any(isinstance(d, error_details_pb2.ResourceInfo) for d in details)


# -- shipping --------------------------------------------------------------------------------


async def test_shipping_a_received_order_publishes_shipped_once(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new(item="Pixel 10", quantity=1)
    await publish(js, order.ordered(), order.pay_completed())
    received = await wait_for(stub, order.order_id, RECEIVED, item="Pixel 10")

    shipped = await stub.ShipOrder(
        pb.ShipOrderRequest(order_id=order.order_id, request_id=uid("r")),
        metadata=as_dealer(),
    )

    assert shipped.status == SHIPPED
    assert shipped.HasField("ship_time")
    assert shipped.create_time == received.create_time
    assert shipped.ship_time.ToDatetime() >= shipped.create_time.ToDatetime()
    assert (shipped.item, shipped.quantity, shipped.customer_id) == (
        "Pixel 10",
        1,
        order.customer_id,
    )
    # Shipping again, also racing itself: the same order back, no second event.
    again = await asyncio.gather(
        *(
            stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
            for _ in range(5)
        )
    )
    assert all(other == shipped for other in again)
    assert await find(stub, order.order_id) == shipped
    await barrier(stub, js)
    [event] = await shipped_events(js, order.order_id)
    assert (event.order_id, event.customer_id, event.item, event.quantity) == (
        order.order_id,
        order.customer_id,
        "Pixel 10",
        1,
    )


async def test_concurrent_first_ships_publish_one_event(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new()
    await publish(js, order.ordered(), order.pay_completed())
    await wait_for(stub, order.order_id, RECEIVED, item=order.item)

    results = await asyncio.gather(
        *(
            stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
            for _ in range(8)
        )
    )

    assert len({result.SerializeToString() for result in results}) == 1
    await barrier(stub, js)
    assert len(await shipped_events(js, order.order_id)) == 1


async def test_a_cancelled_payment_cancels_the_order_and_shipping_fails(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new()
    await publish(js, order.ordered(), order.pay_completed())
    await wait_for(stub, order.order_id, RECEIVED, item=order.item)

    await publish(js, order.pay_cancelled())

    cancelled = await wait_for(stub, order.order_id, CANCELLED, item=order.item)
    assert not cancelled.HasField("ship_time")
    assert cancelled in await listing(stub, CANCELLED)
    assert order.order_id not in {o.order_id for o in await listing(stub, RECEIVED)}
    error = await refused(
        stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    info, details = rich_error(error)
    assert info.reason == "STORE_ORDER_CANCELLED"
    assert any(isinstance(d, error_details_pb2.PreconditionFailure) for d in details)
    await barrier(stub, js)
    assert await shipped_events(js, order.order_id) == []


async def test_a_cancellation_that_overtook_the_payment_still_cancels(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new()

    await publish(js, order.pay_cancelled(), order.pay_completed(), order.ordered())

    await wait_for(stub, order.order_id, CANCELLED, item=order.item)
    error = await refused(
        stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_a_payment_cancelled_after_shipping_leaves_the_order_shipped(
    store: Store, conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext]
) -> None:
    stub, js = conn
    order = Order.new()
    await publish(js, order.ordered(), order.pay_completed())
    shipped = await ship_when_received(stub, order.order_id)

    await publish(js, order.pay_cancelled())
    await barrier(stub, js)

    assert await find(stub, order.order_id) == shipped
    warnings = [
        line
        for line in store.process.log_tail(200_000).splitlines()
        if order.order_id in line and '"level": "WARNING"' in line
    ]
    assert len(warnings) == 1
    assert "stays shipped" in warnings[0]


async def test_a_paid_order_whose_details_are_late_ships_once_they_arrive(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    order = Order.new()
    await publish(js, order.pay_completed())
    await wait_for(stub, order.order_id, RECEIVED, item="")

    error = await refused(
        stub.ShipOrder(pb.ShipOrderRequest(order_id=order.order_id), metadata=as_dealer())
    )

    assert error.code() is grpc.StatusCode.UNAVAILABLE
    info, details = rich_error(error)
    assert info.reason == "STORE_ORDER_DETAILS_PENDING"
    assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details)
    await publish(js, order.ordered())
    shipped = await ship_when_received(stub, order.order_id)
    assert (shipped.status, shipped.item, shipped.quantity) == (SHIPPED, order.item, 2)


# -- bad requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.ShipOrderRequest(), {"order_id"}),
        (pb.ShipOrderRequest(order_id="o 1", request_id="r" * 65), {"order_id", "request_id"}),
        (pb.ListStoreOrdersRequest(page_size=-1), {"page_size"}),
        (pb.ListStoreOrdersRequest(status=99), {"status"}),  # type: ignore[arg-type]
        (pb.ListStoreOrdersRequest(page_token="not-a-token"), {"page_token"}),
        (
            pb.ListStoreOrdersRequest(page_size=-5, page_token="@@", status=7),  # type: ignore[arg-type]
            {"page_size", "page_token", "status"},
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_with_field_violations(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
    request_: pb.ShipOrderRequest | pb.ListStoreOrdersRequest,
    fields: set[str],
) -> None:
    stub, _ = conn
    if isinstance(request_, pb.ShipOrderRequest):
        error = await refused(stub.ShipOrder(request_, metadata=as_dealer()))
    else:
        error = await refused(stub.ListStoreOrders(request_, metadata=as_dealer()))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, details = rich_error(error)
    assert info.reason == "INVALID_ARGUMENT"
    [bad_request] = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    assert {v.field for v in bad_request.field_violations} == fields


# -- listing ---------------------------------------------------------------------------------


async def test_pages_list_every_order_once_oldest_first(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    orders = [Order.new() for _ in range(7)]
    for order in orders:
        await publish(js, order.ordered(), order.pay_completed())
    await wait_for(stub, orders[-1].order_id, RECEIVED, item=orders[-1].item)
    everything = await listing(stub, RECEIVED)

    pages: list[list[pb.StoreOrder]] = []
    token = ""
    while True:
        page = await stub.ListStoreOrders(
            pb.ListStoreOrdersRequest(page_size=3, page_token=token, status=RECEIVED),
            metadata=as_dealer(),
        )
        pages.append(list(page.store_orders))
        token = page.next_page_token
        if not token:
            break
        # A token only works with the filter it was made for.
        error = await refused(
            stub.ListStoreOrders(
                pb.ListStoreOrdersRequest(page_size=3, page_token=token), metadata=as_dealer()
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT

    paged = [order for page in pages for order in page]
    assert all(len(page) == 3 for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= 3
    assert paged == everything
    keys = [(o.create_time.ToDatetime(), o.order_id) for o in paged]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    mine = [o.order_id for o in paged if o.order_id in {order.order_id for order in orders}]
    assert mine == [order.order_id for order in orders]  # received in the order paid
    assert {o.status for o in paged} == {RECEIVED}


async def test_page_size_defaults_to_50_and_is_capped_at_500(
    conn: tuple[pb_grpc.StoreServiceStub, JetStreamContext],
) -> None:
    stub, js = conn
    orders = [Order.new() for _ in range(501)]
    for order in orders:
        await publish(js, order.pay_completed())
    await wait_for(stub, orders[-1].order_id, RECEIVED)

    default = await stub.ListStoreOrders(pb.ListStoreOrdersRequest(), metadata=as_dealer())
    capped = await stub.ListStoreOrders(
        pb.ListStoreOrdersRequest(page_size=10_000), metadata=as_dealer()
    )

    assert len(default.store_orders) == 50
    assert default.next_page_token
    assert len(capped.store_orders) == 500
    assert capped.next_page_token
    rest = await stub.ListStoreOrders(
        pb.ListStoreOrdersRequest(page_size=10_000, page_token=capped.next_page_token),
        metadata=as_dealer(),
    )
    listed = [o.order_id for o in [*capped.store_orders, *rest.store_orders]]
    assert len(listed) == len(set(listed))
    assert {o.order_id for o in orders} <= set(listed)


# -- auto-ship -------------------------------------------------------------------------------


async def test_auto_ship_ships_received_orders_after_the_delay(auto_store: Store) -> None:
    delay = timedelta(seconds=AUTO_SHIP_DELAY_SECONDS)
    ready, cancelled, details_late = Order.new(), Order.new(), Order.new()
    async with connected(auto_store) as (stub, js):
        await publish(
            js,
            ready.ordered(),
            ready.pay_completed(),
            cancelled.pay_cancelled(),  # overtook its payment: never to be shipped
            cancelled.pay_completed(),
            cancelled.ordered(),
            details_late.pay_completed(),  # cannot ship without knowing what to ship
        )

        await wait_for(stub, cancelled.order_id, CANCELLED, item=cancelled.item)
        await wait_for(stub, details_late.order_id, RECEIVED)
        shipped = await wait_for(stub, ready.order_id, SHIPPED, item=ready.item)

        assert shipped.ship_time.ToDatetime() - shipped.create_time.ToDatetime() >= delay
        [event] = await eventually(
            lambda: shipped_events(js, ready.order_id), timeout=15, message="Shipped"
        )
        assert (event.item, event.quantity) == (ready.item, ready.quantity)
        # By now both others were received for longer than the delay, too.
        for order, status in ((details_late, RECEIVED), (cancelled, CANCELLED)):
            current = await find(stub, order.order_id)
            assert current is not None
            assert current.status == status

        await publish(js, details_late.ordered())
        late = await wait_for(stub, details_late.order_id, SHIPPED, item=details_late.item)
        assert late.ship_time.ToDatetime() - late.create_time.ToDatetime() >= delay
        # A ShipOrder call after the job shipped it: unchanged, and still one event.
        assert (
            await stub.ShipOrder(pb.ShipOrderRequest(order_id=ready.order_id), metadata=as_dealer())
            == shipped
        )
        await barrier(stub, js)
        assert len(await shipped_events(js, ready.order_id)) == 1
        assert len(await shipped_events(js, details_late.order_id)) == 1
        assert await shipped_events(js, cancelled.order_id) == []
