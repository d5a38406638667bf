"""The HTTP/JSON API as docs/openapi/phoneseller.swagger.json describes it, on the running
gateway: every operation's real answer, and real errors (the gateway's own and the
services'), validate against the document's schemas, objects closed (tests/support/openapi.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stack.supervisor import LocalStack
from tests.support import openapi
from tests.support.stack import running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("stack"))) as running:
        yield running


def call(
    stack: LocalStack,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{stack.gateway}{path}", method=method, data=data, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def checked(
    stack: LocalStack, method: str, path: str, body: Any = None, *, token: str | None
) -> tuple[int, Any, str]:
    """Call, and validate the answer against the document; returns the route it covered."""
    status, answer = call(stack, method, path, body, token=token)
    route = openapi.validate_response(method, path, status, answer)
    return status, answer, route


def reason(body: dict[str, Any]) -> str:
    return str(next(d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo")))


def test_every_operation_answers_as_documented(stack: LocalStack) -> None:
    customer = f"api-{uuid.uuid4().hex[:8]}"
    alice = stack.issuer.token(customer, "customer")
    dealer = stack.issuer.token("dealer-1", "dealer")
    covered: set[str] = set()

    def ok(method: str, path: str, body: Any = None, *, token: str) -> Any:
        status, answer, route = checked(stack, method, path, body, token=token)
        assert status == 200, (method, path, answer)
        covered.add(route)
        return answer

    place = {"customer_id": customer, "item": "Galaxy S25", "quantity": 1, "unit_price": 1250000}
    order = ok("POST", "/v1/orders", place, token=alice)
    assert order["status"] == "ORDER_STATUS_PAID"
    ok("GET", f"/v1/orders/{order['order_id']}", token=alice)
    ok("GET", f"/v1/payments/{order['payment_id']}", token=alice)

    def granted() -> Any:
        history = ok("GET", f"/v1/customers/{customer}/history", token=alice)
        return history if history["point_balance"] == "125000" else None

    history = wait_until(granted, timeout=30, interval=0.3, message="points in the view")
    assert [e["event_type"] for e in history["orders"][0]["timeline"]][:2] == [
        "Ordered",
        "PayCompleted",
    ]
    balance = ok("GET", f"/v1/customers/{customer}/points", token=alice)
    assert balance["balance"] == "125000"

    shipped = ok("POST", "/v1/orders", {**place, "item": "Pixel 9"}, token=alice)

    def received() -> Any:
        query = "/v1/storeOrders?status=STORE_ORDER_STATUS_RECEIVED&page_size=100"
        listed = ok("GET", query, token=dealer)
        ids = {o["order_id"] for o in listed["store_orders"]}
        return listed if shipped["order_id"] in ids else None

    wait_until(received, timeout=30, interval=0.3, message="the store order")
    store_order = ok("POST", f"/v1/storeOrders/{shipped['order_id']}:ship", {}, token=dealer)
    assert store_order["status"] == "STORE_ORDER_STATUS_SHIPPED"
    cancelled = ok("POST", f"/v1/orders/{order['order_id']}:cancel", {}, token=alice)
    assert cancelled["status"] == "ORDER_STATUS_CANCELLED"

    every = {
        f"{verb.upper()} {path}"
        for path, operations in openapi.document()["paths"].items()
        for verb in operations
    }
    assert covered == every


def test_errors_are_documented_statuses(stack: LocalStack) -> None:
    customer = f"api-{uuid.uuid4().hex[:8]}"
    alice = stack.issuer.token(customer, "customer")
    dealer = stack.issuer.token("dealer-1", "dealer")
    place = {"customer_id": customer, "item": "Galaxy S25", "quantity": 1, "unit_price": 1250000}

    def error(method: str, path: str, body: Any = None, *, token: str | None) -> Any:
        status, answer, _ = checked(stack, method, path, body, token=token)
        assert status >= 400, answer
        return status, answer

    # The gateway's own refusals.
    assert error("POST", "/v1/orders", place, token=None)[0] == 401
    status, body = error("POST", "/v1/orders", place, token=dealer)
    assert (status, reason(body)) == (403, "ROLE_NOT_ALLOWED")
    status, body = call(stack, "POST", "/v1/orders", token=alice, raw=b"{not json")
    openapi.validate_status(body)
    assert (status, reason(body)) == (400, "MALFORMED_REQUEST_BODY")
    # The services' errors, transcoded.
    status, body = error("POST", "/v1/orders", {**place, "quantity": 0}, token=alice)
    assert status == 400
    assert any(d["@type"].endswith("BadRequest") for d in body["details"])
    assert error("GET", "/v1/orders/no-such-order", token=alice)[0] == 404
    assert error("GET", "/v1/customers/someone-else/points", token=alice)[0] == 403

    # Promotion down: the cancel fails fast with UNAVAILABLE and a RetryInfo, as documented.
    status, order = call(stack, "POST", "/v1/orders", place, token=alice)
    assert status == 200, order
    stop = stack.supervisorctl("stop", *stack.programs("promotion"))
    try:
        assert stop.returncode == 0, stop.stdout + stop.stderr
        status, body = error("POST", f"/v1/orders/{order['order_id']}:cancel", {}, token=alice)
        assert (status, body["code"]) == (503, 14), body
        retry = [d for d in body["details"] if d["@type"].endswith("RetryInfo")]
        assert retry and retry[0]["retry_delay"].endswith("s"), body
    finally:
        started = stack.supervisorctl("start", *stack.programs("promotion"))
        assert started.returncode == 0, started.stdout + started.stderr
