"""What promotion does with the events it consumes: grant the points of paid orders."""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from phoneseller.payment.v1 import events_pb2 as payment_events

from services.kit.consumer import Handler
from services.kit.db import UnitOfWork
from services.kit.events import Envelope, EventTypes
from services.kit.validation import ID_PATTERN
from services.promotion.domain import PointGrant, PointsRate
from services.promotion.repository import PromotionRepository

log = logging.getLogger(__name__)

CONSUMED = EventTypes([payment_events.PayCompleted])


def payment_handler(rate: PointsRate) -> Handler:
    """The consumer's handler: one grant per paid order, however often its payment is seen."""

    async def handle(uow: UnitOfWork, event: Message, envelope: Envelope) -> None:
        if not isinstance(event, payment_events.PayCompleted):
            raise ValueError(f"promotion does not handle {envelope.event_type}")
        if not (ID_PATTERN.match(event.order_id) and ID_PATTERN.match(event.customer_id)):
            # Retried, then parked in dead_letters by the consumer: never dropped silently.
            raise ValueError("PayCompleted without a valid order_id and customer_id")
        grants = PromotionRepository(uow.connection)
        grant = await grants.get(event.order_id, for_update=True)
        if grant is None:
            result = PointGrant.for_payment(event.order_id, event.customer_id, event.amount, rate)
            await grants.add(result)
        else:
            result = grant.with_payment(event.customer_id, event.amount, rate)
            if result is grant:
                log.info(
                    "payment already granted; ignored",
                    extra={"event_id": envelope.event_id, "payment_id": event.payment_id},
                )
                return
            if not await grants.save(result, expected=grant):
                # Changed under us (a concurrent clawback): the consumer retries the event.
                raise RuntimeError(f"grant of order {event.order_id!r} changed concurrently")
        uow.emit(*result.events)
        log.info(
            "points granted",
            extra={
                "customer_id": result.customer_id,
                "points": result.points_granted,
                "reversed_at_once": result.points_reversed > 0,
                "payment_id": event.payment_id,
            },
        )

    return handle
