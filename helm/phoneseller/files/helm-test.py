"""`helm test` for phoneseller: every service is healthy and an order goes through the gateway.

Runs in the phoneseller image (grpcio, grpcio-health-checking and the generated stubs are
installed there), started by templates/tests/test-smoke.yaml with these variables:

- PHONESELLER_TEST_SERVICES: "name=host:port,..." of the services to health-check;
- PHONESELLER_TEST_GATEWAY: host:port for gRPC calls to the order service (the ingress gateway,
  or the order service itself when the chart runs without Istio);
- PHONESELLER_TEST_AUTHORITY: the :authority / Host to send (empty: the address's);
- PHONESELLER_TEST_HTTP_GATEWAY: "http://host:port" to read the order back as JSON, or empty;
- PHONESELLER_TEST_CUSTOMER_ID, _ITEM, _QUANTITY, _UNIT_PRICE: the order to place;
- PHONESELLER_TEST_QUIT_SIDECAR: "1" to stop the pod's Istio sidecar at the end.

Exits 0 when all checks pass, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")
DEADLINE_SECONDS = 10.0
ATTEMPTS = 10


def log(message: str) -> None:
    print(message, flush=True)


def with_retries(what: str, call: Callable[[], T]) -> T:
    """Retry a call that fails with UNAVAILABLE (a pod or sidecar still starting)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS:
                raise
            log(f"  {what}: UNAVAILABLE, retrying ({attempt}/{ATTEMPTS})")
            time.sleep(min(2.0 * attempt, 10.0))
    raise AssertionError("unreachable")


def channel(address: str, authority: str) -> grpc.Channel:
    options = [("grpc.default_authority", authority)] if authority else []
    return grpc.insecure_channel(address, options=options)


def check_health(name: str, address: str) -> bool:
    with channel(address, "") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = with_retries(
                name,
                lambda: stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_SECONDS
                ),
            )
        except grpc.RpcError as error:
            log(f"FAIL {name} ({address}): {error}")
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    log(f"{'ok  ' if serving else 'FAIL'} {name} ({address}): {status}")
    return serving


def place_order(address: str, authority: str) -> str | None:
    from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc

    request = order_service_pb2.PlaceOrderRequest(
        customer_id=os.environ["PHONESELLER_TEST_CUSTOMER_ID"],
        item=os.environ["PHONESELLER_TEST_ITEM"],
        quantity=int(os.environ["PHONESELLER_TEST_QUANTITY"]),
        unit_price=int(os.environ["PHONESELLER_TEST_UNIT_PRICE"]),
        request_id=str(uuid.uuid4()),
    )
    with channel(address, authority) as ch:
        stub = order_service_pb2_grpc.OrderServiceStub(ch)
        try:
            order = with_retries(
                "PlaceOrder", lambda: stub.PlaceOrder(request, timeout=DEADLINE_SECONDS)
            )
        except grpc.RpcError as error:
            log(f"FAIL PlaceOrder via {address}: {error}")
            return None
    status = order_service_pb2.OrderStatus.Name(order.status)
    log(f"ok   PlaceOrder via {address}: order {order.order_id} is {status}")
    return str(order.order_id)


def get_order_json(base_url: str, authority: str, order_id: str) -> bool:
    request = urllib.request.Request(f"{base_url}/v1/orders/{order_id}")
    if authority:
        request.add_header("Host", authority)
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_SECONDS) as response:
            body: dict[str, Any] = json.load(response)
    except (OSError, ValueError) as error:
        log(f"FAIL GET /v1/orders/{order_id} via {base_url}: {error}")
        return False
    if body.get("orderId") != order_id:
        log(f"FAIL GET /v1/orders/{order_id} via {base_url}: unexpected body {body}")
        return False
    log(f"ok   GET /v1/orders/{order_id} via {base_url} (HTTP/JSON): {body.get('status')}")
    return True


def quit_sidecar() -> None:
    """Stop the Istio sidecar so that the pod can complete."""
    request = urllib.request.Request("http://127.0.0.1:15020/quitquitquit", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except OSError as error:
        log(f"note: could not stop the sidecar: {error}")


def main() -> int:
    services = [entry.split("=", 1) for entry in os.environ["PHONESELLER_TEST_SERVICES"].split(",")]
    authority = os.environ.get("PHONESELLER_TEST_AUTHORITY", "")
    healthy = [check_health(name, address) for name, address in services]  # check them all
    ok = all(healthy)
    order_id = place_order(os.environ["PHONESELLER_TEST_GATEWAY"], authority)
    ok = ok and order_id is not None
    http_gateway = os.environ.get("PHONESELLER_TEST_HTTP_GATEWAY", "")
    if order_id and http_gateway:
        ok = get_order_json(http_gateway, authority, order_id) and ok
    log("PASS" if ok else "FAILED")
    return 0 if ok else 1


def run() -> int:
    try:
        return main()
    finally:
        if os.environ.get("PHONESELLER_TEST_QUIT_SIDECAR") == "1":
            quit_sidecar()


if __name__ == "__main__":
    sys.exit(run())
