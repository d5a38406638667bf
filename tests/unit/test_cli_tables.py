"""Formatting of answers and errors: money, statuses, aligned tables, JSON."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import timestamp_pb2
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from client import tables
from client.api import ApiError, FieldViolation

NOON = timestamp_pb2.Timestamp(seconds=1_767_268_800)  # 2026-01-01 12:00:00 UTC


@pytest.mark.parametrize(
    ("won", "text"),
    [
        (0, "0 won"),
        (999, "999 won"),
        (1_200_000, "1,200,000 won"),
        (100_000_000, "100,000,000 won"),
    ],
)
def test_money_has_thousands_separators_and_won(won: int, text: str) -> None:
    assert tables.money(won) == text


def test_points() -> None:
    assert tables.points(246_913) == "246,913"
    assert tables.signed_points(120_000) == "+120,000"
    assert tables.signed_points(-120_000) == "-120,000"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (tables.order_status(order_pb.ORDER_STATUS_PAID), "PAID"),
        (tables.order_status(order_pb.ORDER_STATUS_PAYMENT_DECLINED), "PAYMENT_DECLINED"),
        (tables.order_status(order_pb.ORDER_STATUS_UNSPECIFIED), "-"),
        (tables.payment_status(payment_pb.PAYMENT_STATUS_CANCELLED), "CANCELLED"),
        (tables.store_status(store_pb.STORE_ORDER_STATUS_RECEIVED), "RECEIVED"),
        (tables.ledger_kind(promotion_pb.LEDGER_ENTRY_KIND_REVERSAL), "REVERSAL"),
        (tables.order_status(42), "42"),  # a status newer than this client
    ],
)
def test_statuses_lose_their_enum_prefix(text: str, value: str) -> None:
    assert text == value


def test_timestamps_are_utc_and_unset_is_a_dash() -> None:
    assert tables.timestamp(NOON) == "2026-01-01 12:00:00 UTC"
    assert tables.timestamp(timestamp_pb2.Timestamp()) == "-"


def test_columns_align_and_right_align_numbers() -> None:
    text = tables.columns(("NAME", "AMOUNT"), [("a", "1 won"), ("longer", "1,000 won")], right={1})
    assert text.splitlines() == [
        "NAME       AMOUNT",
        "------  ---------",
        "a           1 won",
        "longer  1,000 won",
    ]


def test_columns_refuse_ragged_rows() -> None:
    with pytest.raises(ValueError, match="cells"):
        tables.columns(("A", "B"), [("1",)])


def an_order(**changes: object) -> order_pb.Order:
    order = order_pb.Order(
        order_id="o-1",
        customer_id="alice",
        item="Galaxy S25",
        quantity=2,
        unit_price=1_234_567,
        amount=2_469_134,
        status=order_pb.ORDER_STATUS_PAID,
        payment_id="p-1",
        payback_points=246_913,
        create_time=NOON,
        update_time=NOON,
    )
    for name, value in changes.items():
        setattr(order, name, value)
    return order


def test_order_table() -> None:
    assert tables.order_table(an_order(), request_id="r-1").splitlines() == [
        "order           o-1",
        "customer        alice",
        "item            Galaxy S25",
        "quantity        2",
        "unit price      1,234,567 won",
        "amount          2,469,134 won",
        "status          PAID",
        "payment         p-1",
        "payback points  246,913",
        "created         2026-01-01 12:00:00 UTC",
        "updated         2026-01-01 12:00:00 UTC",
        "request id      r-1",
    ]


def test_a_declined_order_shows_why_and_no_payment_shows_a_dash() -> None:
    text = tables.order_table(
        an_order(
            status=order_pb.ORDER_STATUS_PAYMENT_DECLINED,
            payment_id="",
            decline_reason="amount above the limit",
        )
    )
    assert "status          PAYMENT_DECLINED" in text
    assert "payment         -" in text
    assert "decline reason  amount above the limit" in text
    assert "request id" not in text


def test_history_table_with_timeline() -> None:
    history = customer_pb.CustomerHistory(
        customer_id="alice",
        point_balance=246_913,
        orders=[
            customer_pb.OrderHistory(
                order_id="o-1",
                item="Galaxy S25",
                quantity=2,
                amount=2_469_134,
                status=order_pb.ORDER_STATUS_PAID,
                payment_status=payment_pb.PAYMENT_STATUS_PAID,
                store_status=store_pb.STORE_ORDER_STATUS_RECEIVED,
                points_granted=246_913,
                update_time=NOON,
                timeline=[
                    customer_pb.TimelineEntry(
                        event_type="Ordered", occurred_at=NOON, description="ordered"
                    )
                ],
            ),
            customer_pb.OrderHistory(order_id="o-2", item="Galaxy A", quantity=1, amount=5),
        ],
    )
    lines = tables.history_table(history, timeline=True).splitlines()
    assert lines[:3] == ["customer       alice", "point balance  246,913", "orders         2"]
    header, _rule, first, second = lines[4:8]
    assert header.split() == list(tables.HISTORY_HEADERS)
    assert first.split() == [
        "o-1",
        "Galaxy",
        "S25",
        "2",
        "2,469,134",
        "won",
        "PAID",
        "PAID",
        "RECEIVED",
        "246,913",
        "0",
        "2026-01-01",
        "12:00:00",
        "UTC",
    ]
    assert second.split()[5:] == ["won", "-", "-", "-", "0", "0", "-"]
    assert first.index("2,469,134 won") + len("2,469,134 won") == header.index("AMOUNT") + len(
        "AMOUNT"
    ), "money is right-aligned under its header"
    assert "timeline of o-1" in lines
    assert any(line.split()[3:] == ["Ordered", "ordered"] for line in lines)


def test_an_unknown_customer_has_an_empty_history() -> None:
    text = tables.history_table(customer_pb.CustomerHistory(customer_id="nobody"))
    assert text.splitlines() == ["customer       nobody", "point balance  0", "orders         0"]


def test_balance_table_shows_the_signed_ledger() -> None:
    balance = promotion_pb.PointBalance(
        customer_id="alice",
        balance=0,
        entries=[
            promotion_pb.LedgerEntry(
                order_id="o-1",
                kind=promotion_pb.LEDGER_ENTRY_KIND_GRANT,
                points=120_000,
                create_time=NOON,
            ),
            promotion_pb.LedgerEntry(
                order_id="o-1",
                kind=promotion_pb.LEDGER_ENTRY_KIND_REVERSAL,
                points=-120_000,
                create_time=NOON,
            ),
        ],
    )
    assert tables.balance_table(balance).splitlines()[3:] == [
        "WHEN                     ORDER  KIND        POINTS",
        "-----------------------  -----  --------  --------",
        "2026-01-01 12:00:00 UTC  o-1    GRANT     +120,000",
        "2026-01-01 12:00:00 UTC  o-1    REVERSAL  -120,000",
    ]


def test_store_order_table() -> None:
    text = tables.store_order_table(
        store_pb.StoreOrder(
            order_id="o-1",
            status=store_pb.STORE_ORDER_STATUS_SHIPPED,
            create_time=NOON,
            ship_time=NOON,
        )
    )
    assert "status    SHIPPED" in text
    assert "shipped   2026-01-01 12:00:00 UTC" in text


def test_payment_table() -> None:
    text = tables.payment_table(
        payment_pb.Payment(payment_id="p-1", amount=1_000, status=payment_pb.PAYMENT_STATUS_PAID)
    )
    assert "amount    1,000 won" in text
    assert "status    PAID" in text


def bad_request() -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        "INVALID_ARGUMENT",
        "phoneseller",
        {"service": "order"},
        [FieldViolation("customer_id", "is required"), FieldViolation("quantity", "too big")],
    )


def test_error_table_shows_code_reason_fields_retry_and_request_id() -> None:
    assert tables.error_table(bad_request()).splitlines() == [
        "error              INVALID_ARGUMENT",
        "message            invalid request",
        "reason             INVALID_ARGUMENT",
        "field customer_id  is required",
        "field quantity     too big",
    ]
    unavailable = ApiError(
        grpc.StatusCode.UNAVAILABLE, "try again", "PROMOTION_UNAVAILABLE", retry_delay=1.0
    )
    lines = tables.error_table(unavailable, request_id="r-9").splitlines()
    assert "retry after  1.0 s" in lines
    assert "request id   r-9  (retry with --request-id r-9)" in lines


def test_error_json() -> None:
    document = json.loads(tables.error_json(bad_request(), request_id="r-1"))["error"]
    assert document["code"] == "INVALID_ARGUMENT"
    assert document["reason"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in document["field_violations"]] == ["customer_id", "quantity"]
    assert document["retry_delay_seconds"] is None
    assert document["request_id"] == "r-1"


def test_json_keeps_proto_field_names_and_default_values() -> None:
    document = json.loads(tables.to_json(an_order(payback_points=0, item="갤럭시")))
    assert document["order_id"] == "o-1"
    assert document["status"] == "ORDER_STATUS_PAID"
    assert document["amount"] == "2469134"  # proto3 JSON: int64 as a string
    assert document["payback_points"] == "0"
    assert document["item"] == "갤럭시"
    assert "갤럭시" in tables.to_json(an_order(item="갤럭시")), "not escaped"


@pytest.mark.parametrize(("value", "text"), [(0.25, "250 ms"), (1.0, "1.0 s"), (2.345, "2.3 s")])
def test_seconds(value: float, text: str) -> None:
    assert tables.seconds(value) == text
