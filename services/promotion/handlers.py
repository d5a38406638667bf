"""What promotion does with the events it consumes: grant the points of paid orders."""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from phoneseller.payment.v1 import events_pb2 as payment_events

from services.kit.events import Envelope, EventTypes
from services.kit.validation import ID_PATTERN
from services.promotion.domain import PointsRate
from services.promotion.repository import PromotionUnitOfWork
from services.promotion.usecases import grant_points

log = logging.getLogger(__name__)

CONSUMED = EventTypes([payment_events.PayCompleted])


async def handle(
    uow: PromotionUnitOfWork, event: Message, envelope: Envelope, *, rate: PointsRate
) -> None:
    """One grant per paid order, however often its payment is seen."""
    if not isinstance(event, payment_events.PayCompleted):
        raise ValueError(f"promotion does not handle {envelope.event_type}")
    if not (ID_PATTERN.match(event.order_id) and ID_PATTERN.match(event.customer_id)):
        # Retried, then parked in dead_letters by the consumer: never dropped silently.
        raise ValueError("PayCompleted without a valid order_id and customer_id")
    result = await grant_points(uow, rate, event.order_id, event.customer_id, event.amount)
    if result is None:
        log.info(
            "payment already granted; ignored",
            extra={"event_id": envelope.event_id, "payment_id": event.payment_id},
        )
