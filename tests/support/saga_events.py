"""The events of whole sagas, as the services publish them: inputs for the view's tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import events_pb2 as promotion_events
from phoneseller.store.v1 import events_pb2 as store_events

from services.customer.domain import CustomerHistory, fact_from_event, history, project

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def saga(
    path: str,
    *,
    customer_id: str,
    order_id: str | None = None,
    start: datetime = T0,
    unit_price: int = 600_000,
    quantity: int = 2,
    points_rate: int = 10,
) -> list[Message]:
    """The events of one order's saga, as the services publish them, one second apart.

    `path`: "happy" (ordered, paid, points, shipped), "cancel" (ordered, paid, points,
    points back, payment back, order cancelled) or "decline" (ordered, payment declined).
    """
    order_id = order_id or f"order-{uuid.uuid4().hex[:12]}"
    amount = unit_price * quantity
    points = amount * points_rate // 100
    payment_id = f"pay-{order_id}"
    clock = iter(range(100))

    def common() -> dict[str, Any]:
        at = Timestamp()
        at.FromDatetime(start + timedelta(seconds=next(clock)))
        return {
            "event_id": str(uuid.uuid4()),
            "occurred_at": at,
            "order_id": order_id,
            "customer_id": customer_id,
        }

    events: list[Message] = [
        order_events.Ordered(
            item="Galaxy S24", quantity=quantity, unit_price=unit_price, amount=amount, **common()
        )
    ]
    if path == "decline":
        events.append(
            payment_events.PayDeclined(
                payment_id=payment_id, amount=amount, reason="above the limit", **common()
            )
        )
        return events
    events += [
        payment_events.PayCompleted(payment_id=payment_id, amount=amount, **common()),
        promotion_events.PromoCompleted(points=points, **common()),
    ]
    if path == "happy":
        events.append(store_events.Shipped(item="Galaxy S24", quantity=quantity, **common()))
    elif path == "cancel":
        events += [
            promotion_events.PromoCancelled(points_reversed=points, **common()),
            payment_events.PayCancelled(payment_id=payment_id, amount=amount, **common()),
            order_events.OrderCancelled(reason="changed my mind", **common()),
        ]
    else:
        raise ValueError(path)
    return events


def expected_history(customer_id: str, events: list[Message]) -> CustomerHistory:
    """What the view must show: the pure projection of the customer's events."""
    facts = [fact_from_event(e) for e in events if getattr(e, "customer_id", "") == customer_id]
    by_order: dict[str, list[Any]] = {}
    for fact in facts:
        by_order.setdefault(fact.order_id, []).append(fact)
    return history(customer_id, [project(f) for f in by_order.values()])
