"""The order's use cases in-process: a fake payment service and an in-memory database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.kit import errors
from services.kit.db import Database
from services.kit.identity import Caller
from services.order import usecases
from services.order.domain import Order, OrderStatus
from services.order.repository import OrderUnitOfWork, metadata
from services.order.usecases import PaymentOutcome, PlaceOrder
from tests.support.in_memory import in_memory_database, outbox_types

#: The customer of the orders `place()` makes, signed in.
ALICE = Caller("alice", frozenset({"customer"}))


class FakePayment:
    """The payment service: approves, or declines, or is unreachable, as the test says."""

    def __init__(self) -> None:
        self.declines = False
        self.unreachable = False
        self.cancel_refusal: errors.ServiceError | None = None
        self.paid: list[str] = []
        self.cancelled: list[tuple[str, str]] = []

    async def pay(self, order: Order) -> PaymentOutcome:
        if self.unreachable:
            raise errors.unavailable("PAYMENT_UNAVAILABLE", "down", retry_after_seconds=1.0)
        self.paid.append(order.order_id)
        if self.declines:
            return PaymentOutcome(f"pay-{order.order_id}", True, "above the limit")
        return PaymentOutcome(f"pay-{order.order_id}", False)

    async def cancel(self, order: Order, request_id: str) -> None:
        if self.cancel_refusal is not None:
            raise self.cancel_refusal
        self.cancelled.append((order.payment_id, request_id))


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    async with in_memory_database(metadata) as database:
        yield database


@pytest.fixture
def payment() -> FakePayment:
    return FakePayment()


def place(request_id: str = "", quantity: int = 2) -> PlaceOrder:
    return PlaceOrder("alice", "Galaxy S25", quantity, 1_200_000, request_id)


async def order_in(database: Database, order_id: str) -> Order:
    return await usecases.get_order(OrderUnitOfWork(database), order_id)


async def test_placing_records_the_order_and_its_payment(
    database: Database, payment: FakePayment
) -> None:
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    assert order.status is OrderStatus.PAID
    assert order.amount == 2_400_000
    assert order.payment_id == f"pay-{order.order_id}"
    assert payment.paid == [order.order_id]
    assert await order_in(database, order.order_id) == order
    assert await outbox_types(database) == ["Ordered"]


async def test_a_declined_payment_is_an_answer_not_an_error(
    database: Database, payment: FakePayment
) -> None:
    payment.declines = True
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    assert order.status is OrderStatus.PAYMENT_DECLINED
    assert order.decline_reason == "above the limit"
    assert (await order_in(database, order.order_id)).status is OrderStatus.PAYMENT_DECLINED


async def test_the_same_request_id_gives_the_same_order_and_pays_once(
    database: Database, payment: FakePayment
) -> None:
    first = await usecases.place_order(OrderUnitOfWork(database), payment, place("r-1"))
    again = await usecases.place_order(OrderUnitOfWork(database), payment, place("r-1"))
    assert again == first
    assert payment.paid == [first.order_id]
    assert await outbox_types(database) == ["Ordered"]


async def test_a_retry_after_payment_was_unreachable_finishes_the_order(
    database: Database, payment: FakePayment
) -> None:
    payment.unreachable = True
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.place_order(OrderUnitOfWork(database), payment, place("r-2"))
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "PAYMENT_UNAVAILABLE"

    payment.unreachable = False
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place("r-2"))
    assert order.status is OrderStatus.PAID
    assert await outbox_types(database) == ["Ordered"], "one order, one Ordered"


async def test_a_request_id_reused_for_other_terms_is_refused_and_writes_nothing(
    database: Database, payment: FakePayment
) -> None:
    first = await usecases.place_order(OrderUnitOfWork(database), payment, place("r-3"))
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.place_order(OrderUnitOfWork(database), payment, place("r-3", quantity=5))
    assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.reason == "REQUEST_ID_REUSED"
    assert refused.value.metadata["order_id"] == first.order_id
    assert await outbox_types(database) == ["Ordered"]


async def test_cancelling_cancels_the_payment_then_the_order(
    database: Database, payment: FakePayment
) -> None:
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    cancelled = await usecases.cancel_order(
        OrderUnitOfWork(database), payment, order.order_id, "", ALICE
    )
    assert cancelled.status is OrderStatus.CANCELLED
    assert payment.cancelled == [(order.payment_id, f"cancel-{order.order_id}")]
    assert await outbox_types(database) == ["Ordered", "OrderCancelled"]

    again = await usecases.cancel_order(
        OrderUnitOfWork(database), payment, order.order_id, "c", ALICE
    )
    assert again.status is OrderStatus.CANCELLED
    assert len(payment.cancelled) == 1, "a cancelled order is not cancelled twice"


async def test_a_refused_clawback_leaves_the_order_paid(
    database: Database, payment: FakePayment
) -> None:
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    payment.cancel_refusal = errors.unavailable(
        "PROMOTION_UNAVAILABLE", "points system down", retry_after_seconds=0.5
    )
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.cancel_order(
            OrderUnitOfWork(database), payment, order.order_id, "c-1", ALICE
        )
    assert refused.value.reason == "PROMOTION_UNAVAILABLE"
    assert (await order_in(database, order.order_id)).status is OrderStatus.PAID
    assert await outbox_types(database) == ["Ordered"]

    payment.cancel_refusal = None  # the retry with the same request id goes through
    cancelled = await usecases.cancel_order(
        OrderUnitOfWork(database), payment, order.order_id, "c-1", ALICE
    )
    assert cancelled.status is OrderStatus.CANCELLED
    assert payment.cancelled == [(order.payment_id, "c-1")]


async def test_an_order_whose_payment_is_pending_cannot_be_cancelled(
    database: Database, payment: FakePayment
) -> None:
    payment.unreachable = True
    with pytest.raises(errors.ServiceError):
        await usecases.place_order(OrderUnitOfWork(database), payment, place("r-4"))
    async with OrderUnitOfWork(database).reading() as uow:
        pending = await uow.orders.by_request_id("r-4")
    assert pending is not None and pending.status is OrderStatus.ORDERED
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.cancel_order(OrderUnitOfWork(database), payment, pending.order_id, "", ALICE)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "ORDER_PAYMENT_PENDING"


async def test_a_shipped_order_cannot_be_cancelled(
    database: Database, payment: FakePayment
) -> None:
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    async with OrderUnitOfWork(database) as uow:
        shipped = await uow.orders.get(order.order_id)
        assert shipped is not None and shipped.mark_shipped()
        await uow.orders.save(shipped)
        await uow.commit()
    with pytest.raises(errors.ServiceError) as refused:
        await usecases.cancel_order(OrderUnitOfWork(database), payment, order.order_id, "", ALICE)
    assert refused.value.reason == "ORDER_ALREADY_SHIPPED"
    assert payment.cancelled == []


async def test_an_unknown_order_is_not_found(database: Database, payment: FakePayment) -> None:
    with pytest.raises(errors.ServiceError) as missing:
        await usecases.cancel_order(OrderUnitOfWork(database), payment, "nope", "", ALICE)
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


async def test_only_the_orders_customer_may_cancel_it(database: Database) -> None:
    payment = FakePayment()
    order = await usecases.place_order(OrderUnitOfWork(database), payment, place())
    for someone in (Caller("bob", frozenset({"customer"})), Caller("op", frozenset({"operator"}))):
        with pytest.raises(errors.ServiceError) as refused:
            await usecases.cancel_order(
                OrderUnitOfWork(database), payment, order.order_id, "c", someone
            )
        assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert payment.cancelled == [], "nothing was asked of the payment"
    assert (await order_in(database, order.order_id)).status is OrderStatus.PAID
