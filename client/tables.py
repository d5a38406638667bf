"""Text for people and JSON for programs: every answer and error of the client, formatted.

Pure functions of messages; nothing here talks to the system. Money is integer won with
thousands separators ("1,200,000 won"), points are integers, statuses lose their enum prefix
("ORDER_STATUS_PAID" → "PAID"), times are UTC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from client.api import ApiError

#: What a table shows for a value that is not there (no payment yet, time not set, …).
NONE = "-"


def money(won: int) -> str:
    """An amount in won: `1200000` → `1,200,000 won`."""
    return f"{won:,} won"


def points(count: int) -> str:
    """A number of points: `120000` → `120,000`."""
    return f"{count:,}"


def signed_points(count: int) -> str:
    """A change in points: `+120,000` or `-120,000`."""
    return f"{count:+,}"


def _enum_prefix(enum_type: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.name).upper() + "_"


def label(enum_type: EnumDescriptor, value: int) -> str:
    """An enum value without its prefix: `ORDER_STATUS_PAID` → `PAID`; UNSPECIFIED → `-`."""
    number = enum_type.values_by_number.get(value)
    if number is None:
        return str(value)  # a value newer than this client
    name: str = number.name
    short = name.removeprefix(_enum_prefix(enum_type))
    return NONE if short == "UNSPECIFIED" else short


def order_status(value: int) -> str:
    return label(order_pb.OrderStatus.DESCRIPTOR, value)


def payment_status(value: int) -> str:
    return label(payment_pb.PaymentStatus.DESCRIPTOR, value)


def store_status(value: int) -> str:
    return label(store_pb.StoreOrderStatus.DESCRIPTOR, value)


def ledger_kind(value: int) -> str:
    return label(promotion_pb.LedgerEntryKind.DESCRIPTOR, value)


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """A time in UTC to the second; unset → `-`."""
    if value.seconds == 0 and value.nanos == 0:
        return NONE
    moment = datetime.fromtimestamp(value.seconds, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(value: str) -> str:
    return value or NONE


def key_values(rows: Iterable[tuple[str, str]]) -> str:
    """Two aligned columns, a name and a value per line."""
    items = list(rows)
    width = max((len(name) for name, _ in items), default=0)
    return "\n".join(f"{name:<{width}}  {value}".rstrip() for name, value in items)


def columns(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()
) -> str:
    """An aligned table with a header line; the columns numbered in `right` align right."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, headers {len(headers)}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    right_aligned = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, body)])


def order_table(order: order_pb.Order, request_id: str | None = None) -> str:
    rows = [
        ("order", order.order_id),
        ("customer", order.customer_id),
        ("item", order.item),
        ("quantity", str(order.quantity)),
        ("unit price", money(order.unit_price)),
        ("amount", money(order.amount)),
        ("status", order_status(order.status)),
        ("payment", _text(order.payment_id)),
        ("payback points", points(order.payback_points)),
    ]
    if order.decline_reason:
        rows.append(("decline reason", order.decline_reason))
    rows += [("created", timestamp(order.create_time)), ("updated", timestamp(order.update_time))]
    if request_id is not None:
        rows.append(("request id", request_id))
    return key_values(rows)


def payment_table(payment: payment_pb.Payment) -> str:
    rows = [
        ("payment", payment.payment_id),
        ("order", payment.order_id),
        ("customer", payment.customer_id),
        ("amount", money(payment.amount)),
        ("status", payment_status(payment.status)),
    ]
    if payment.decline_reason:
        rows.append(("decline reason", payment.decline_reason))
    rows += [
        ("created", timestamp(payment.create_time)),
        ("updated", timestamp(payment.update_time)),
    ]
    return key_values(rows)


def store_order_table(store_order: store_pb.StoreOrder) -> str:
    return key_values(
        [
            ("order", store_order.order_id),
            ("customer", store_order.customer_id),
            ("item", store_order.item),
            ("quantity", str(store_order.quantity)),
            ("status", store_status(store_order.status)),
            ("received", timestamp(store_order.create_time)),
            ("shipped", timestamp(store_order.ship_time)),
        ]
    )


HISTORY_HEADERS = (
    "ORDER",
    "ITEM",
    "QTY",
    "AMOUNT",
    "STATUS",
    "PAYMENT",
    "STORE",
    "POINTS",
    "REVERSED",
    "UPDATED",
)


def history_table(history: customer_pb.CustomerHistory, timeline: bool = False) -> str:
    """The customer's orders as the view sees them, newest first; with `timeline`, each
    order's events below the table."""
    head = key_values(
        [
            ("customer", history.customer_id),
            ("point balance", points(history.point_balance)),
            ("orders", str(len(history.orders))),
        ]
    )
    if not history.orders:
        return head
    table = columns(
        HISTORY_HEADERS,
        (
            (
                entry.order_id,
                entry.item,
                str(entry.quantity),
                money(entry.amount),
                order_status(entry.status),
                payment_status(entry.payment_status),
                store_status(entry.store_status),
                points(entry.points_granted),
                points(entry.points_reversed),
                timestamp(entry.update_time),
            )
            for entry in history.orders
        ),
        right={2, 3, 7, 8},
    )
    parts = [head, table]
    if timeline:
        for entry in history.orders:
            events = columns(
                ("WHEN", "EVENT", "WHAT"),
                ((timestamp(e.occurred_at), e.event_type, e.description) for e in entry.timeline),
            )
            parts.append(f"timeline of {entry.order_id}\n{events}")
    return "\n\n".join(parts)


def balance_table(balance: promotion_pb.PointBalance) -> str:
    """A customer's point balance and its ledger, oldest entry first."""
    head = key_values(
        [("customer", balance.customer_id), ("point balance", points(balance.balance))]
    )
    if not balance.entries:
        return head
    ledger = columns(
        ("WHEN", "ORDER", "KIND", "POINTS"),
        (
            (timestamp(e.create_time), e.order_id, ledger_kind(e.kind), signed_points(e.points))
            for e in balance.entries
        ),
        right={3},
    )
    return f"{head}\n\n{ledger}"


def seconds(value: float) -> str:
    """A duration: `1.5` → `1.5 s`, `0.25` → `250 ms`."""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def error_table(error: ApiError, request_id: str | None = None) -> str:
    """Everything a failed call said: code, message, reason, bad fields, when to retry; and
    the request id it used, to retry the same call."""
    rows = [("error", error.code_name), ("message", error.message or NONE)]
    if error.reason:
        rows.append(("reason", error.reason))
    rows += [(f"field {v.field}", v.description) for v in error.violations]
    if error.retry_delay is not None:
        rows.append(("retry after", seconds(error.retry_delay)))
    rows += [("note", note) for note in error.notes]
    if request_id is not None:
        rows.append(("request id", f"{request_id}  (retry with --request-id {request_id})"))
    return key_values(rows)


def error_json(error: ApiError, request_id: str | None = None) -> str:
    return json.dumps(
        {
            "error": {
                "code": error.code_name,
                "message": error.message,
                "reason": error.reason,
                "domain": error.domain,
                "metadata": error.metadata,
                "field_violations": [
                    {"field": v.field, "description": v.description} for v in error.violations
                ],
                "retry_delay_seconds": error.retry_delay,
                "notes": error.notes,
                "request_id": request_id,
            }
        },
        indent=2,
        ensure_ascii=False,
    )


def to_json(message: Message) -> str:
    """A message as proto3 JSON with the .proto field names, default values included."""
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        ensure_ascii=False,
        indent=2,
    )
