"""The gateway as users meet it: grpcurl (list, describe, call), HTTP/JSON, and what it
refuses — on the local stack under supervisord, Envoy rendered from the chart's policy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.supervisor import LocalStack
from tests.support.stack import running_stack, stack_on_free_ports

pytestmark = pytest.mark.slow

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("stack"))) as running:
        yield running


def grpcurl(
    stack: LocalStack, *positional: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext [-d DATA] GATEWAY POSITIONAL...`, as a user types it."""
    flags = ["-d", data] if data is not None else []
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, stack.gateway, *positional],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def http(
    stack: LocalStack, method: str, path: str, body: dict[str, object] | None = None
) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://{stack.gateway}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_grpcurl_lists_and_describes_the_api(stack: LocalStack) -> None:
    listed = grpcurl(stack, "list")
    assert listed.returncode == 0, listed.stderr
    for service in (
        "OrderService",
        "PaymentService",
        "PromotionService",
        "StoreService",
        "CustomerService",
    ):
        assert f"phoneseller.{service.removesuffix('Service').lower()}.v1.{service}" in (
            listed.stdout
        )
    described = grpcurl(stack, "describe", "phoneseller.order.v1.OrderService")
    assert described.returncode == 0, described.stderr
    assert "rpc PlaceOrder ( .phoneseller.order.v1.PlaceOrderRequest )" in described.stdout


def test_grpcurl_places_an_order_through_the_gateway(stack: LocalStack) -> None:
    customer = f"grpcurl-{uuid.uuid4().hex[:8]}"
    placed = grpcurl(
        stack,
        "phoneseller.order.v1.OrderService/PlaceOrder",
        data=json.dumps(
            {"customer_id": customer, "item": "Galaxy S25", "quantity": 1, "unit_price": 1200000}
        ),
    )
    assert placed.returncode == 0, placed.stderr
    order = json.loads(placed.stdout)
    assert order["status"] == "ORDER_STATUS_PAID"
    got = grpcurl(
        stack,
        "phoneseller.order.v1.OrderService/GetOrder",
        data=json.dumps({"order_id": order["order_id"]}),
    )
    assert json.loads(got.stdout)["order_id"] == order["order_id"]


def test_http_json_orders_and_history(stack: LocalStack) -> None:
    customer = f"http-{uuid.uuid4().hex[:8]}"
    status, order = http(
        stack,
        "POST",
        "/v1/orders",
        {"customer_id": customer, "item": "Galaxy S25", "quantity": 2, "unit_price": 1000000},
    )
    assert status == 200, order
    assert order["status"] == "ORDER_STATUS_PAID"
    assert order["amount"] == "2000000"

    status, got = http(stack, "GET", f"/v1/orders/{order['order_id']}")
    assert (status, got["order_id"]) == (200, order["order_id"])
    status, history = http(stack, "GET", f"/v1/customers/{customer}/history")
    assert status == 200
    assert customer == history["customer_id"]

    status, cancelled = http(stack, "POST", f"/v1/orders/{order['order_id']}:cancel", {})
    assert (status, cancelled["status"]) == (200, "ORDER_STATUS_CANCELLED")


def test_http_errors_are_json_with_http_codes(stack: LocalStack) -> None:
    status, error = http(
        stack,
        "POST",
        "/v1/orders",
        {"customer_id": "", "item": "x", "quantity": 0, "unit_price": 1},
    )
    assert status == 400
    assert error["code"] == 3  # INVALID_ARGUMENT
    assert "customer_id" in str(error["message"])
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in error["details"]}  # type: ignore[attr-defined]
    assert details["ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in details["BadRequest"]["field_violations"]] == [
        "customer_id",
        "quantity",
    ]
    status, error = http(stack, "GET", "/v1/orders/no-such-order")
    assert status == 404
    assert error["code"] == 5  # NOT_FOUND


@pytest.mark.parametrize(
    "method",
    [
        "phoneseller.payment.v1.PaymentService/Pay",
        "phoneseller.payment.v1.PaymentService/CancelPayment",
        "phoneseller.promotion.v1.PromotionService/ClawBackPoints",
        "phoneseller.promotion.v1.PromotionService/GetPointGrant",
    ],
)
def test_internal_rpcs_are_refused_at_the_gateway(stack: LocalStack, method: str) -> None:
    refused = grpcurl(stack, method, data="{}")
    assert refused.returncode != 0
    assert "PermissionDenied" in refused.stdout + refused.stderr


def test_public_reads_of_the_other_services_pass(stack: LocalStack) -> None:
    balance = grpcurl(
        stack,
        "phoneseller.promotion.v1.PromotionService/GetPointBalance",
        data='{"customer_id": "nobody"}',
    )
    assert balance.returncode == 0, balance.stderr
    listed = grpcurl(stack, "phoneseller.store.v1.StoreService/ListStoreOrders", data="{}")
    assert listed.returncode == 0, listed.stderr
