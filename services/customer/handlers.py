"""Feeding events into the view: one set of statements per batch, not per event.

The kit's consumer hands `handle` all new events of a batch inside the batch's unit of work,
and commits them with their inbox rows; the repository writes the whole batch in a handful of
statements whatever its size (DESIGN §7: never a round trip per event).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from google.protobuf.message import Message

from services.customer.domain import EVENT_TYPES, fact_from_event
from services.customer.repository import CustomerUnitOfWork
from services.kit.consumer import handles_batches
from services.kit.events import Envelope

log = logging.getLogger(__name__)

#: The view consumes every event of the saga.
CONSUMED = EVENT_TYPES


@handles_batches
async def handle(uow: CustomerUnitOfWork, batch: Sequence[tuple[Message, Envelope]]) -> None:
    """Project a batch of new events into the view, in the consumer's transaction."""
    facts = [fact_from_event(event) for event, _ in batch]
    applied = await uow.views.apply(facts)
    log.debug(
        "batch projected",
        extra={"events": len(facts), "new": applied, "orders": len({f.order_id for f in facts})},
    )
