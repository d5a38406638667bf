"""The order's use cases: the saga's synchronous half, free of gRPC.

Each takes the unit of work and the payment service as parameters (the payment behind the
`PaymentPort` protocol), so tests run them in-process with a fake payment and an in-memory
database (tests/unit/test_order_usecases.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from services.kit import context, errors
from services.kit.identity import Caller
from services.order.domain import Order, OrderStatus
from services.order.repository import OrderUnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentOutcome:
    """What the payment service answered for an order."""

    payment_id: str
    declined: bool
    decline_reason: str = ""


class PaymentPort(Protocol):
    """The payment service as the order sees it. Failures are `errors.ServiceError`s."""

    async def pay(self, order: Order) -> PaymentOutcome:
        """Charge the order; idempotent on the order id."""

    async def cancel(self, order: Order, request_id: str) -> None:
        """Cancel the order's payment (its points are clawed back first)."""


@dataclass(frozen=True)
class PlaceOrder:
    customer_id: str
    item: str
    quantity: int
    unit_price: int
    #: AIP-155: the same request id gives the same order; empty means none.
    request_id: str = ""


async def place_order(uow: OrderUnitOfWork, payment: PaymentPort, command: PlaceOrder) -> Order:
    """Record the order (and Ordered), charge it, record the outcome: two transactions.

    A retry with the same request id finds the first order and finishes what it left undone.
    If payment cannot be reached the order stays ORDERED and the caller gets UNAVAILABLE with
    RetryInfo; should the payment have gone through, its PayCompleted event marks the order
    PAID anyway (services/order/handlers.py).
    """
    order = await _record(uow, command)
    context.correlation_id.set(order.order_id)
    if order.status is not OrderStatus.ORDERED:
        return order  # a retry of a request that completed
    outcome = await payment.pay(order)
    async with uow:
        paid = await uow.orders.get(order.order_id, for_update=True)
        if paid is None:
            raise errors.not_found("order", order.order_id)
        if outcome.declined:
            paid.mark_declined(outcome.payment_id, outcome.decline_reason)
        else:
            paid.mark_paid(outcome.payment_id)
        await uow.orders.save(paid)
        await uow.commit()
    return paid


async def _record(uow: OrderUnitOfWork, command: PlaceOrder) -> Order:
    """The order of this request id, recording a new one if there is none."""
    async with uow:
        order = Order.place(
            command.customer_id,
            command.item,
            command.quantity,
            command.unit_price,
            command.request_id,
        )
        if not await uow.orders.add(order):
            existing = await uow.orders.by_request_id(command.request_id)
            assert existing is not None, "the insert conflicted, so the order exists"
            order = _same_request(existing, command)
        await uow.commit()
    return order


def _same_request(existing: Order, command: PlaceOrder) -> Order:
    if not existing.same_request(
        command.customer_id, command.item, command.quantity, command.unit_price
    ):
        raise errors.already_exists(
            "REQUEST_ID_REUSED",
            f"request_id {command.request_id!r} was used for a different order",
            {"request_id": command.request_id, "order_id": existing.order_id},
        )
    return existing


async def get_order(uow: OrderUnitOfWork, order_id: str) -> Order:
    async with uow.reading():
        order = await uow.orders.get(order_id)
    if order is None:
        raise errors.not_found("order", order_id)
    return order


async def cancel_order(
    uow: OrderUnitOfWork, payment: PaymentPort, order_id: str, request_id: str, caller: Caller
) -> Order:
    """Cancel the payment (which claws the points back first), then the order.

    Only the customer who placed it may (PERMISSION_DENIED for anyone else, nothing changes).
    If the payment cannot be cancelled now, nothing changes and the caller gets the payment
    side's answer (UNAVAILABLE with RetryInfo, or FAILED_PRECONDITION).
    """
    order = await get_order(uow, order_id)
    caller.require_acting_for(order.customer_id, "the orders")
    if order.status is OrderStatus.CANCELLED:
        return order
    if order.status is OrderStatus.SHIPPED:
        raise errors.failed_precondition(
            "ORDER_ALREADY_SHIPPED",
            "a shipped order can no longer be cancelled",
            f"orders/{order.order_id}",
            {"order_id": order.order_id},
        )
    if order.status is OrderStatus.ORDERED:
        raise errors.failed_precondition(
            "ORDER_PAYMENT_PENDING",
            "the order's payment has not completed yet; place the order again with the "
            "same request_id to finish it, then cancel",
            f"orders/{order.order_id}",
            {"order_id": order.order_id},
        )
    if order.status is OrderStatus.PAID:
        await payment.cancel(order, request_id or f"cancel-{order.order_id}")
    async with uow:
        cancelled = await uow.orders.get(order_id, for_update=True)
        if cancelled is None:
            raise errors.not_found("order", order_id)
        cancelled.cancel("cancelled by the customer")
        await uow.orders.save(cancelled)
        await uow.commit()
    log.info("order cancelled", extra={"order_id": order_id})
    return cancelled
