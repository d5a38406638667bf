"""How the order follows the saga's events: payment, points and shipping outcomes."""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import Message
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.store.v1 import events_pb2 as store_events

from services.kit.db import UnitOfWork
from services.kit.events import Envelope, EventTypes
from services.order.repository import OrderRepository

log = logging.getLogger(__name__)

EVENT_TYPES = EventTypes(
    [
        payment_events.PayCompleted,
        payment_events.PayDeclined,
        payment_events.PayCancelled,
        promotion_events.PromoCompleted,
        promotion_events.PromoCancelled,
        store_events.Shipped,
    ]
)


async def handle(uow: UnitOfWork, event: Message, envelope: Envelope) -> None:
    orders = OrderRepository(uow.connection)
    order = await orders.get(envelope.order_id, for_update=True)
    if order is None:
        # Events only follow orders this service recorded; one we never saw is not ours.
        log.warning("event for an unknown order ignored", extra={"event_type": envelope.event_type})
        return
    fields: Any = event
    match event:
        case payment_events.PayCompleted():
            order.mark_paid(fields.payment_id)
        case payment_events.PayDeclined():
            order.mark_declined(fields.payment_id, fields.reason)
        case payment_events.PayCancelled():
            # Normally CancelOrder already cancelled the order; this covers a cancel whose
            # answer was lost between payment and order.
            order.cancel("payment cancelled")
        case promotion_events.PromoCompleted():
            order.points_earned(fields.points)
        case promotion_events.PromoCancelled():
            order.points_clawed_back(fields.points_reversed)
        case store_events.Shipped():
            order.mark_shipped()
    await orders.save(order)
    uow.emit(*order.events)
