"""How the order follows the saga's events: payment, points and shipping outcomes."""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import Message
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.store.v1 import events_pb2 as store_events

from services.kit.events import Envelope, EventTypes
from services.order.repository import OrderUnitOfWork

log = logging.getLogger(__name__)

CONSUMED = EventTypes(
    [
        payment_events.PayCompleted,
        payment_events.PayDeclined,
        payment_events.PayCancelled,
        promotion_events.PromoCompleted,
        promotion_events.PromoCancelled,
        store_events.Shipped,
    ]
)


async def handle(uow: OrderUnitOfWork, event: Message, envelope: Envelope) -> None:
    order = await uow.orders.get(envelope.order_id, for_update=True)
    if order is None:
        # Events only follow orders this service recorded; one we never saw is not ours.
        log.warning("event for an unknown order ignored", extra={"event_type": envelope.event_type})
        return
    fields: Any = event
    match event:
        case payment_events.PayCompleted():
            changed = order.mark_paid(fields.payment_id)
        case payment_events.PayDeclined():
            changed = order.mark_declined(fields.payment_id, fields.reason)
        case payment_events.PayCancelled():
            # Normally CancelOrder already cancelled the order; this covers a cancel whose
            # answer was lost between payment and order.
            changed = order.cancel("payment cancelled")
        case promotion_events.PromoCompleted():
            changed = order.points_earned(fields.points)
        case promotion_events.PromoCancelled():
            changed = order.points_clawed_back(fields.points_reversed)
        case store_events.Shipped():
            changed = order.mark_shipped()
        case _:
            raise ValueError(f"the order does not handle {envelope.event_type}")
    if changed:
        await uow.orders.save(order)
