"""Domain events on the wire: protobuf bytes plus headers that say what they are.

Every event message has `event_id`, `occurred_at`, `order_id` and `customer_id` as its first
four fields (tests/unit/test_contracts.py checks). On NATS an event travels as the serialized
message with headers naming its id (JetStream's de-duplication key), type, correlation id
(the order), customer and trace context, so consumers can route, de-duplicate and log without
decoding the payload. Its time is in the payload only: a header would be formatted and parsed
for every delivery and nothing reads it before the payload is decoded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.kit import context

STREAM = "PHONESELLER"
SUBJECT_PREFIX = "phoneseller"
#: How long JetStream remembers a `Nats-Msg-Id`: a relay that crashes after publishing and
#: before deleting the rows republishes them on restart; within this window they are refused.
#: JetStream's own default. The server keeps every id of the window in memory, so a longer
#: window costs memory in proportion to the event rate.
DUPLICATE_WINDOW_SECONDS = 120.0

# Header names. `Nats-Msg-Id` is JetStream's de-duplication key: a republished event is refused.
MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Phoneseller-Event-Type"
#: The event id of events published before it became `Nats-Msg-Id` alone.
EVENT_ID = "Phoneseller-Event-Id"
ORDER_ID = "Phoneseller-Order-Id"
CUSTOMER_ID = "Phoneseller-Customer-Id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

E = TypeVar("E", bound=Message)


def subject_for(event_type: str) -> str:
    """`phoneseller.payment.v1.PayCompleted` travels on `phoneseller.payment.PayCompleted`."""
    package, _, name = event_type.rpartition(".")
    parts = package.split(".")
    if len(parts) != 3 or parts[0] != SUBJECT_PREFIX:
        raise ValueError(f"{event_type!r} is not a phoneseller event type")
    return f"{SUBJECT_PREFIX}.{parts[1]}.{name}"


def new_event(event_class: type[E], *, order_id: str, customer_id: str, **fields: Any) -> E:
    """An event with a fresh id, the current UTC time and the given fields."""
    # From the clock's nanoseconds rather than Timestamp.FromDatetime, which does calendar
    # arithmetic in Python (a quarter of an event's cost in the outbox benchmark).
    now = time.time_ns()
    occurred_at = Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000 // 1000 * 1000)
    return event_class(
        event_id=str(uuid.uuid4()),
        occurred_at=occurred_at,
        order_id=order_id,
        customer_id=customer_id,
        **fields,
    )


@dataclass(frozen=True)
class Envelope:
    """An event as stored in the outbox and carried on NATS."""

    event_id: str
    event_type: str
    subject: str
    order_id: str
    customer_id: str
    #: None for an envelope read off NATS (the time is in the payload).
    occurred_at: datetime | None
    traceparent: str
    payload: bytes
    #: W3C tracestate that goes with `traceparent` (vendors' trace data; usually empty).
    tracestate: str = ""

    def headers(self) -> dict[str, str]:
        headers = {
            MSG_ID: self.event_id,
            EVENT_TYPE: self.event_type,
            ORDER_ID: self.order_id,
            CUSTOMER_ID: self.customer_id,
        }
        if self.traceparent:
            headers[TRACEPARENT] = self.traceparent
            if self.tracestate:
                headers[TRACESTATE] = self.tracestate
        return headers

    def outbox_row(self, writer: str) -> dict[str, object]:
        """The envelope as a row of the outbox table, written by the process `writer`."""
        return {
            "writer": writer,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "subject": self.subject,
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "occurred_at": self.occurred_at,
            "traceparent": self.traceparent,
            "tracestate": self.tracestate,
            "payload": self.payload,
        }

    @classmethod
    def from_outbox_row(cls, row: Mapping[str, Any]) -> Envelope:
        occurred_at: datetime = row["occurred_at"]
        if occurred_at.tzinfo is None:  # SQLite keeps no zone; we only ever store UTC.
            occurred_at = occurred_at.replace(tzinfo=UTC)
        return cls(
            event_id=row["event_id"],
            event_type=row["event_type"],
            subject=row["subject"],
            order_id=row["order_id"],
            customer_id=row["customer_id"],
            occurred_at=occurred_at,
            traceparent=row["traceparent"],
            payload=bytes(row["payload"]),
            tracestate=row.get("tracestate") or "",
        )

    @classmethod
    def from_message(
        cls, subject: str, headers: Mapping[str, str] | None, payload: bytes
    ) -> Envelope:
        """Read an envelope back from a NATS message; raises ValueError if it is not one."""
        headers = headers or {}
        event_id = headers.get(MSG_ID) or headers.get(EVENT_ID)
        if not event_id or EVENT_TYPE not in headers:
            raise ValueError(f"not a phoneseller event: headers {MSG_ID} and {EVENT_TYPE} missing")
        return cls(
            event_id=event_id,
            event_type=headers[EVENT_TYPE],
            subject=subject,
            order_id=headers.get(ORDER_ID, ""),
            customer_id=headers.get(CUSTOMER_ID, ""),
            occurred_at=None,
            traceparent=headers.get(TRACEPARENT, ""),
            payload=payload,
            tracestate=headers.get(TRACESTATE, ""),
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_datetime(value: Timestamp) -> datetime:
    """A Timestamp as a UTC datetime (to the microsecond), without Timestamp.ToDatetime's
    calendar arithmetic in Python."""
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def envelope_for(event: Message, trace: tuple[str, str] | None = None) -> Envelope:
    """Wrap an event message for the outbox with the trace context it was raised in: `trace`
    ((traceparent, tracestate), as `context.current()` gives it), else the current one.

    That context is the parent of the span that publishes the event (services.kit.tracing)."""
    traceparent, tracestate = context.current() if trace is None else trace
    fields: Any = event
    event_type = event.DESCRIPTOR.full_name
    return Envelope(
        event_id=fields.event_id,
        event_type=event_type,
        subject=subject_for(event_type),
        order_id=fields.order_id,
        customer_id=fields.customer_id,
        occurred_at=utc_datetime(fields.occurred_at),
        traceparent=traceparent,
        payload=event.SerializeToString(),
        tracestate=tracestate,
    )


class EventTypes:
    """The event classes a consumer understands, by full protobuf name."""

    def __init__(self, classes: Iterable[type[Message]]) -> None:
        self._by_name = {cls.DESCRIPTOR.full_name: cls for cls in classes}

    @property
    def subjects(self) -> list[str]:
        return sorted(subject_for(name) for name in self._by_name)

    def __contains__(self, event_type: str) -> bool:
        return event_type in self._by_name

    def decode(self, envelope: Envelope) -> Message:
        """The event message; raises ValueError for unknown types or undecodable bytes."""
        cls = self._by_name.get(envelope.event_type)
        if cls is None:
            raise ValueError(f"unknown event type {envelope.event_type!r}")
        try:
            return cls.FromString(envelope.payload)
        except Exception as exc:
            raise ValueError(f"cannot decode {envelope.event_type}: {exc}") from exc
