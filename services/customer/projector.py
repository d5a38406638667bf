"""Feeding events into the view: one set of statements per fetched batch, not per event.

The kit's consumer hands `project` all new events of a fetched batch inside the batch's unit
of work, and commits them with their inbox rows; the repository writes the whole batch in a
handful of statements whatever its size (DESIGN §7: never a round trip per event).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from google.protobuf.message import Message

from services.customer.domain import fact_from_event
from services.customer.repository import CustomerViewRepository
from services.kit.consumer import handles_batches
from services.kit.db import UnitOfWork
from services.kit.events import Envelope

log = logging.getLogger(__name__)


@handles_batches
async def project_batch(uow: UnitOfWork, batch: Sequence[tuple[Message, Envelope]]) -> None:
    """Project a batch of new events into the view, in the consumer's transaction."""
    facts = [fact_from_event(event) for event, _ in batch]
    applied = await CustomerViewRepository(uow.connection).apply(facts)
    log.debug(
        "batch projected",
        extra={"events": len(facts), "new": applied, "orders": len({f.order_id for f in facts})},
    )
