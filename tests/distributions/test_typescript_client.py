"""The TypeScript client (clients/typescript) against the running system: npm ci by the
project's Makefile, tsc over the example and the stubs buf.gen.yaml generated, then the example
signs in with a customer's token, places an order, reads it and the customer's history, and
cancels it, over Connect's gRPC transport (HTTP/2) through the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc

from stack.supervisor import LocalStack
from tests.distributions.conftest import TS_CLIENT
from tests.support.identity import customer_token

pytestmark = pytest.mark.slow


def npm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["npm", *argv],
        cwd=TS_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"npm {' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(node_modules: Path) -> Path:
    """tsc, strict: the example type-checks against the generated stubs."""
    npm("run", "--silent", "build")
    example = TS_CLIENT / "dist" / "example.js"
    assert example.is_file()
    return example


def test_example_places_reads_and_cancels_an_order(built: Path, stack: LocalStack) -> None:
    customer = f"ts-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "PHONESELLER_GATEWAY": f"http://{stack.gateway}",
        "PHONESELLER_TOKEN": stack.issuer.token(customer, "customer"),
    }
    out = npm("run", "--silent", "example", env=env).stdout
    print(out)  # shown with the report when something below fails
    lines = out.strip().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1])
    assert summary["customerId"] == customer
    assert summary["rejected"] == "InvalidArgument"
    assert any(line.startswith("refused: InvalidArgument") and "quantity" in line for line in lines)
    assert summary["placed"] == "PAID"
    assert summary["read"] == "PAID"
    assert summary["historyTimeline"], "the history shows the order's events"
    assert summary["cancelled"] == "CANCELLED"

    # The same order, read back from Python: the TypeScript client changed the real system.
    with grpc.insecure_channel(stack.gateway) as channel:
        order = order_grpc.OrderServiceStub(channel).GetOrder(
            order_pb.GetOrderRequest(order_id=summary["orderId"]),
            metadata=customer_token(stack.issuer, customer),
            timeout=15,
        )
    assert order.customer_id == customer
    assert order.status == order_pb.ORDER_STATUS_CANCELLED


def test_example_without_a_token_says_what_is_missing(built: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PHONESELLER_TOKEN"}
    result = subprocess.run(
        ["node", str(built)], cwd=TS_CLIENT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "PHONESELLER_TOKEN is not set" in result.stderr
