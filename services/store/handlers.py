"""What the store does with the events it consumes: keep one record per order."""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events

from services.kit.events import Envelope, EventTypes
from services.kit.validation import ID_PATTERN
from services.store.domain import StoreOrder, StoreOrderStatus
from services.store.repository import StoreUnitOfWork

log = logging.getLogger(__name__)

CONSUMED = EventTypes(
    [order_events.Ordered, payment_events.PayCompleted, payment_events.PayCancelled]
)


async def handle(uow: StoreUnitOfWork, event: Message, envelope: Envelope) -> None:
    """Apply one fact about an order; seen before, or overtaken by a later fact: no change."""
    order_id: str = getattr(event, "order_id", "")
    customer_id: str = getattr(event, "customer_id", "")
    if not (ID_PATTERN.match(order_id) and ID_PATTERN.match(customer_id)):
        # Retried, then parked in dead_letters by the consumer: never dropped silently.
        raise ValueError(f"{envelope.event_type} without a valid order_id and customer_id")
    current = await uow.store_orders.get(order_id, for_update=True)
    record = current or StoreOrder.unseen(order_id, customer_id)
    if isinstance(event, order_events.Ordered):
        if not event.item or event.quantity <= 0:
            raise ValueError("Ordered without an item and a positive quantity")
        result = record.with_details(customer_id, event.item, event.quantity)
    elif isinstance(event, payment_events.PayCompleted):
        result = record.paid()
    elif isinstance(event, payment_events.PayCancelled):
        if record.status is StoreOrderStatus.SHIPPED:
            log.warning(
                "payment cancelled after the order was shipped; it stays shipped",
                extra={"event_id": envelope.event_id, "payment_id": event.payment_id},
            )
        result = record.payment_cancelled()
    else:
        raise ValueError(f"the store does not handle {envelope.event_type}")
    if current is None or result is not current:
        # A concurrent ShipOrder makes this raise; the consumer tries the event again.
        await uow.store_orders.save(result)
    if result.status is not record.status:
        log.debug(
            "store order updated",
            extra={"status": result.status.value, "event_type": envelope.event_type},
        )
