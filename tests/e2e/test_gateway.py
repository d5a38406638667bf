"""The gateway as users meet it: grpcurl (list, describe, call), HTTP/JSON, signing in with
`phoneseller token`, and what it refuses — on the local stack under supervisord, Envoy rendered
from the chart's policy."""

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
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or "grpcurl"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("stack"))) as running:
        yield running


def token(stack: LocalStack, role: str, subject: str) -> str:
    """`phoneseller token --<role> <subject>`, as a user signs in on one machine."""
    signed = subprocess.run(
        [str(BIN / "phoneseller"), "token", f"--{role}", subject, "--run-dir", str(stack.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return signed.stdout.strip()


def grpcurl(
    stack: LocalStack, *positional: str, data: str | None = None, bearer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext [-H "authorization: Bearer T"] [-d DATA] GATEWAY POSITIONAL...`, as a
    user types it."""
    flags = ["-d", data] if data is not None else []
    if bearer is not None:
        flags += ["-H", f"authorization: Bearer {bearer}"]
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, stack.gateway, *positional],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def http(
    stack: LocalStack,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    bearer: str | None = None,
) -> tuple[int, dict[str, object]]:
    headers = {"content-type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(
        f"http://{stack.gateway}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers=headers,
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
    signed_in = token(stack, "customer", customer)
    placed = grpcurl(
        stack,
        "phoneseller.order.v1.OrderService/PlaceOrder",
        data=json.dumps(
            {"customer_id": customer, "item": "Galaxy S25", "quantity": 1, "unit_price": 1200000}
        ),
        bearer=signed_in,
    )
    assert placed.returncode == 0, placed.stderr
    order = json.loads(placed.stdout)
    assert order["status"] == "ORDER_STATUS_PAID"
    got = grpcurl(
        stack,
        "phoneseller.order.v1.OrderService/GetOrder",
        data=json.dumps({"order_id": order["order_id"]}),
        bearer=signed_in,
    )
    assert json.loads(got.stdout)["order_id"] == order["order_id"]


def test_http_json_orders_and_history(stack: LocalStack) -> None:
    customer = f"http-{uuid.uuid4().hex[:8]}"
    signed_in = token(stack, "customer", customer)
    status, order = http(
        stack,
        "POST",
        "/v1/orders",
        {"customer_id": customer, "item": "Galaxy S25", "quantity": 2, "unit_price": 1000000},
        bearer=signed_in,
    )
    assert status == 200, order
    assert order["status"] == "ORDER_STATUS_PAID"
    assert order["amount"] == "2000000"

    status, got = http(stack, "GET", f"/v1/orders/{order['order_id']}", bearer=signed_in)
    assert (status, got["order_id"]) == (200, order["order_id"])
    status, history = http(stack, "GET", f"/v1/customers/{customer}/history", bearer=signed_in)
    assert status == 200
    assert customer == history["customer_id"]

    status, cancelled = http(
        stack, "POST", f"/v1/orders/{order['order_id']}:cancel", {}, bearer=signed_in
    )
    assert (status, cancelled["status"]) == (200, "ORDER_STATUS_CANCELLED")


def test_http_errors_are_json_with_http_codes(stack: LocalStack) -> None:
    signed_in = token(stack, "customer", "http-errors")
    status, error = http(
        stack,
        "POST",
        "/v1/orders",
        {"customer_id": "", "item": "x", "quantity": 0, "unit_price": 1},
        bearer=signed_in,
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
    status, error = http(stack, "GET", "/v1/orders/no-such-order", bearer=signed_in)
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
    refused = grpcurl(stack, method, data="{}", bearer=token(stack, "operator", "op"))
    assert refused.returncode != 0
    assert "PermissionDenied" in refused.stdout + refused.stderr


def test_public_reads_of_the_other_services_pass(stack: LocalStack) -> None:
    balance = grpcurl(
        stack,
        "phoneseller.promotion.v1.PromotionService/GetPointBalance",
        data='{"customer_id": "nobody"}',
        bearer=token(stack, "customer", "nobody"),
    )
    assert balance.returncode == 0, balance.stderr
    listed = grpcurl(
        stack,
        "phoneseller.store.v1.StoreService/ListStoreOrders",
        data="{}",
        bearer=token(stack, "dealer", "d1"),
    )
    assert listed.returncode == 0, listed.stderr


def test_who_may_call_what_on_the_running_system(stack: LocalStack) -> None:
    """Tokens from `phoneseller token` against the real gateway and services: nobody signed in,
    another customer, a customer calling a dealer RPC; then the dealer ships the order."""
    alice, bob = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("alice", "bob"))
    as_alice, as_bob = token(stack, "customer", alice), token(stack, "customer", bob)
    as_dealer = token(stack, "dealer", "d1")
    order = json.loads(
        grpcurl(
            stack,
            "phoneseller.order.v1.OrderService/PlaceOrder",
            data=json.dumps(
                {"customer_id": alice, "item": "Galaxy S25", "quantity": 1, "unit_price": 900000}
            ),
            bearer=as_alice,
        ).stdout
    )
    get_order = json.dumps({"order_id": order["order_id"]})

    anonymous = grpcurl(stack, "phoneseller.order.v1.OrderService/GetOrder", data=get_order)
    assert "Unauthenticated" in anonymous.stderr, anonymous.stderr
    assert "SIGN_IN_REQUIRED" in anonymous.stderr or "TOKEN_MISSING" in anonymous.stderr
    forged = grpcurl(
        stack, "phoneseller.order.v1.OrderService/GetOrder", data=get_order, bearer="not.a.jwt"
    )
    assert "Unauthenticated" in forged.stderr, forged.stderr
    others = grpcurl(
        stack, "phoneseller.order.v1.OrderService/GetOrder", data=get_order, bearer=as_bob
    )
    assert "PermissionDenied" in others.stderr, others.stderr
    assert "NOT_THE_CUSTOMERS_OWN" in others.stderr
    cancel = json.dumps({"order_id": order["order_id"], "request_id": "bob-cancels"})
    refused = grpcurl(
        stack, "phoneseller.order.v1.OrderService/CancelOrder", data=cancel, bearer=as_bob
    )
    assert "PermissionDenied" in refused.stderr, refused.stderr
    not_a_dealer = grpcurl(
        stack, "phoneseller.store.v1.StoreService/ListStoreOrders", data="{}", bearer=as_alice
    )
    assert "PermissionDenied" in not_a_dealer.stderr, not_a_dealer.stderr
    status, body = http(stack, "GET", f"/v1/orders/{order['order_id']}")
    assert (status, body["code"]) == (401, 16), body

    # Nothing of that changed the order; alice still reads it, the dealer ships it.
    mine = grpcurl(
        stack, "phoneseller.order.v1.OrderService/GetOrder", data=get_order, bearer=as_alice
    )
    assert json.loads(mine.stdout)["status"] == "ORDER_STATUS_PAID"
    ship = json.dumps({"order_id": order["order_id"], "request_id": "d1-ships"})

    def shipped() -> dict[str, object] | None:
        # The dealer order appears when store has handled PayCompleted: a moment after.
        done = grpcurl(
            stack, "phoneseller.store.v1.StoreService/ShipOrder", data=ship, bearer=as_dealer
        )
        return json.loads(done.stdout) if done.returncode == 0 else None

    store_order = wait_until(shipped, timeout=30, message="the dealer ships alice's order")
    assert store_order["status"] == "STORE_ORDER_STATUS_SHIPPED"
