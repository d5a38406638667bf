"""The `helm test` script (helm/phoneseller/files/helm-test.py) against stand-in services.

A real gRPC server plays the five services and the gateway (health + OrderService.PlaceOrder),
a small HTTP server plays the JSON side of the gateway; the script runs as the hook pod runs it,
with the variables the chart renders, and must pass, then fail when a service is not serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc

from tests.helm import chartkit
from tests.helm.chartkit import Rendered

SCRIPT = chartkit.CHART_DIR / "files" / "helm-test.py"
ORDER_ID = "order-1"


class Orders(order_service_pb2_grpc.OrderServiceServicer):
    """The order service (behind the gateway) as far as the hook uses it."""

    def __init__(self) -> None:
        self.placed: list[order_service_pb2.PlaceOrderRequest] = []

    def PlaceOrder(
        self, request: order_service_pb2.PlaceOrderRequest, context: Any
    ) -> order_service_pb2.Order:
        self.placed.append(request)
        return order_service_pb2.Order(
            order_id=ORDER_ID,
            customer_id=request.customer_id,
            status=order_service_pb2.ORDER_STATUS_PAID,
        )

    def GetOrder(
        self, request: order_service_pb2.GetOrderRequest, context: Any
    ) -> order_service_pb2.Order:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the hook")
        raise AssertionError("abort raises")

    def CancelOrder(
        self, request: order_service_pb2.CancelOrderRequest, context: Any
    ) -> order_service_pb2.Order:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the hook")
        raise AssertionError("abort raises")


class JsonGateway(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == f"/v1/orders/{ORDER_ID}"
        body = json.dumps({"orderId": ORDER_ID, "status": "ORDER_STATUS_PAID"} if found else {})
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class StandIns:
    grpc_address: str
    http_address: str
    health: health.HealthServicer
    orders: Orders


@pytest.fixture
def stand_ins() -> Iterator[StandIns]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    orders = Orders()
    order_service_pb2_grpc.add_OrderServiceServicer_to_server(orders, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), JsonGateway)
    threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True).start()
    yield StandIns(f"127.0.0.1:{port}", f"127.0.0.1:{http.server_port}", health_servicer, orders)
    http.shutdown()
    server.stop(grace=None)


def test_the_hook_pod_runs_this_script(rendered: Rendered) -> None:
    (pod,) = rendered.of_kind("Pod")
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [SCRIPT.read_text()]


def hook_environment(rendered: Rendered, stand_ins: StandIns) -> dict[str, str]:
    """The hook pod's variables as the chart renders them, with addresses of the stand-ins."""
    (pod,) = rendered.of_kind("Pod")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    services = [entry.split("=")[0] for entry in env["PHONESELLER_TEST_SERVICES"].split(",")]
    env["PHONESELLER_TEST_SERVICES"] = ",".join(f"{s}={stand_ins.grpc_address}" for s in services)
    env["PHONESELLER_TEST_GATEWAY"] = stand_ins.grpc_address
    env["PHONESELLER_TEST_HTTP_GATEWAY"] = f"http://{stand_ins.http_address}"
    env["PHONESELLER_TEST_QUIT_SIDECAR"] = "0"
    return env


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(str(chartkit.REPO / p) for p in (".", "gen/python"))
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_hook_passes_when_everything_serves(
    default_render: Rendered, stand_ins: StandIns
) -> None:
    result = run_script(hook_environment(default_render, stand_ins))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert f"GET /v1/orders/{ORDER_ID}" in result.stdout
    (placed,) = stand_ins.orders.placed
    values = default_render.values["tests"]["order"]
    assert (placed.customer_id, placed.quantity, placed.unit_price) == (
        values["customerId"],
        values["quantity"],
        values["unitPrice"],
    )
    assert placed.request_id, "an idempotency key, so a retried PlaceOrder orders once"


def test_the_hook_fails_when_a_service_is_not_serving(
    default_render: Rendered, stand_ins: StandIns
) -> None:
    stand_ins.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = run_script(hook_environment(default_render, stand_ins))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout
