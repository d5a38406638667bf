"""The `phoneseller` command against the whole system: the real console script as a process,
through the local gateway, signing in with the stack's development issuer as `make up` leaves it
(`PHONESELLER_RUN_DIR` points the command at the stack's folder, as `.run/` is by default).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb

from client.api import Addresses, PhoneSeller
from client.demo import ControlError, Demo, supervisor_control
from client.signin import DevSignIn
from stack.supervisor import LocalStack
from tests.support.stack import running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PHONESELLER = BIN / "phoneseller"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("cli"))) as running:
        yield running


def api(stack: LocalStack) -> PhoneSeller:
    """The client library over the gateway, signed in by the stack's issuer (an operator for
    reads that name no customer)."""
    return PhoneSeller(
        Addresses.through(stack.gateway), timeout=10, sign_in=DevSignIn(stack.issuer)
    )


def run(stack: LocalStack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PHONESELLER), "--address", stack.gateway, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PHONESELLER_RUN_DIR": str(stack.run_dir)},
    )


def wait_order(
    stack: LocalStack, order_id: str, message: str, **expected: object
) -> order_pb.Order:
    with api(stack) as reader:

        def matches() -> order_pb.Order | None:
            order = reader.get_order(order_id)
            return order if all(getattr(order, k) == v for k, v in expected.items()) else None

        return wait_until(matches, timeout=30, interval=0.1, message=message)


def wait_view(
    stack: LocalStack, customer: str, order_id: str, message: str, **expected: object
) -> customer_pb.OrderHistory:
    with api(stack) as reader:

        def matches() -> customer_pb.OrderHistory | None:
            for entry in reader.history(customer).orders:
                if entry.order_id == order_id and all(
                    getattr(entry, k) == v for k, v in expected.items()
                ):
                    return entry
            return None

        return wait_until(matches, timeout=30, interval=0.1, message=message)


def ok(stack: LocalStack, *argv: str) -> subprocess.CompletedProcess[str]:
    result = run(stack, *argv)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stderr}"
    return result


def row(text: str, name: str) -> str:
    """The value of a `name  value` line of a key/value table."""
    for line in text.splitlines():
        if line.startswith(name + "  "):
            return line[len(name) :].strip()
    raise AssertionError(f"no {name!r} row in:\n{text}")


def place_args(customer: str, unit_price: int = 1_234_567, quantity: int = 2) -> list[str]:
    return [
        "place",
        "--customer",
        customer,
        "--item",
        "Galaxy S25",
        "--quantity",
        str(quantity),
        "--unit-price",
        str(unit_price),
    ]


def test_place_get_history_balance_as_tables(stack: LocalStack, customer: str) -> None:
    placed = ok(stack, *place_args(customer)).stdout
    order_id = row(placed, "order")
    assert row(placed, "status") == "PAID"
    assert row(placed, "unit price") == "1,234,567 won"
    assert row(placed, "amount") == "2,469,134 won"
    assert len(row(placed, "request id")) == 32, "a generated request id is shown"

    wait_order(stack, order_id, "points on the order", payback_points=246_913)
    shown = ok(stack, "get", order_id).stdout
    assert row(shown, "payback points") == "246,913"
    assert row(shown, "customer") == customer

    wait_view(stack, customer, order_id, "view", points_granted=246_913)
    history = ok(stack, "history", customer, "--timeline").stdout
    assert row(history, "point balance") == "246,913"
    (line,) = [line for line in history.splitlines() if line.startswith(order_id)]
    assert line.split()[3:10] == ["2", "2,469,134", "won", "PAID", "PAID", "RECEIVED", "246,913"]
    assert "PayCompleted" in history

    balance = ok(stack, "balance", customer).stdout
    assert row(balance, "point balance") == "246,913"
    assert any(line.split()[3:] == [order_id, "GRANT", "+246,913"] for line in balance.splitlines())


def test_cancel_and_ship_as_tables(stack: LocalStack, customer: str) -> None:
    first = row(ok(stack, *place_args(customer, 1_000_000, 1)).stdout, "order")
    wait_order(stack, first, "points granted", payback_points=100_000)
    cancelled = ok(
        stack, "cancel", first, "--customer", customer, "--request-id", f"{customer}-c1"
    ).stdout
    assert row(cancelled, "status") == "CANCELLED"
    assert row(cancelled, "payback points") == "0"
    assert row(cancelled, "request id") == f"{customer}-c1"
    assert row(ok(stack, "balance", customer).stdout, "point balance") == "0"

    second = row(ok(stack, *place_args(customer, 500_000, 1)).stdout, "order")
    wait_view(
        stack,
        customer,
        second,
        "the store has the order",
        store_status=store_pb.STORE_ORDER_STATUS_RECEIVED,
    )
    shipped = ok(stack, "ship", second).stdout
    assert row(shipped, "status") == "SHIPPED"
    assert row(shipped, "shipped") != "-"
    wait_order(stack, second, "order SHIPPED", status=order_pb.ORDER_STATUS_SHIPPED)

    refused = run(stack, "cancel", second, "--customer", customer)
    assert refused.returncode == 1
    assert row(refused.stderr, "error") == "FAILED_PRECONDITION"
    assert row(refused.stderr, "reason") == "ORDER_ALREADY_SHIPPED"
    assert "retry with --request-id" in row(refused.stderr, "request id")


def test_every_command_as_json(stack: LocalStack, customer: str) -> None:
    result = ok(stack, "--json", *place_args(customer, 300_000, 1), "--request-id", "j-1")
    order = json.loads(result.stdout)
    assert order["status"] == "ORDER_STATUS_PAID"
    assert order["customer_id"] == customer
    assert order["amount"] == "300000"
    assert "request id: j-1" in result.stderr
    order_id = order["order_id"]

    again = json.loads(
        ok(stack, *place_args(customer, 300_000, 1), "--request-id", "j-1", "--json").stdout
    )
    assert again["order_id"] == order_id, "the same request id returns the same order"

    wait_order(stack, order_id, "points", payback_points=30_000)
    assert json.loads(ok(stack, "get", order_id, "--json").stdout)["payback_points"] == "30000"
    wait_view(stack, customer, order_id, "view", points_granted=30_000)
    history = json.loads(ok(stack, "history", customer, "--json").stdout)
    assert history["point_balance"] == "30000"
    assert [o["order_id"] for o in history["orders"]] == [order_id]
    assert history["orders"][0]["store_status"] == "STORE_ORDER_STATUS_RECEIVED"
    balance = json.loads(ok(stack, "balance", customer, "--json").stdout)
    assert [(e["kind"], e["points"]) for e in balance["entries"]] == [
        ("LEDGER_ENTRY_KIND_GRANT", "30000")
    ]
    shipped = json.loads(ok(stack, "ship", order_id, "--json").stdout)
    assert shipped["status"] == "STORE_ORDER_STATUS_SHIPPED"

    second = json.loads(ok(stack, "--json", *place_args(customer, 200_000, 1)).stdout)
    cancelled = json.loads(
        ok(stack, "--json", "cancel", second["order_id"], "--customer", customer).stdout
    )
    assert cancelled["status"] == "ORDER_STATUS_CANCELLED"


def test_bad_input_shows_the_field_violation_and_exits_1(stack: LocalStack) -> None:
    refused = run(stack, *place_args("al ice", quantity=0))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert row(refused.stderr, "error") == "INVALID_ARGUMENT"
    assert row(refused.stderr, "reason") == "INVALID_ARGUMENT"
    assert "1 to 64 characters" in row(refused.stderr, "field customer_id")
    assert row(refused.stderr, "field quantity")

    as_json = run(stack, "--json", *place_args("al ice"))
    assert as_json.returncode == 1
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["customer_id"]

    missing = run(stack, "get", "no-such-order")
    assert (missing.returncode, row(missing.stderr, "reason")) == (1, "ORDER_NOT_FOUND")
    assert run(stack, "place", "--customer", "x").returncode == 2, "usage error"


def test_demo_without_the_outage_through_the_command(stack: LocalStack) -> None:
    result = run(stack, "demo", "--promotion-control", "none", "--step-timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promotion outage skipped" in result.stdout
    assert "All steps passed." in result.stdout


def test_the_whole_demo_with_promotion_stopped_and_started(stack: LocalStack) -> None:
    """The demo as `phoneseller demo` runs it after `make up`: signed in by the development
    issuer, stopping and starting promotion with supervisorctl."""
    out = io.StringIO()
    with api(stack) as signed_in:
        demo = Demo(signed_in, out, promotion=supervisor_control(stack.run_dir), timeout=20)
        passed = demo.run()
    text = out.getvalue()
    assert passed, text
    assert [r.ok for r in demo.results] == [True] * 13
    refusal = text[text.index("== 9.") : text.index("== 10.")]
    assert row(refusal, "error") == "UNAVAILABLE"
    assert row(refusal, "reason") == "PROMOTION_UNAVAILABLE"
    assert row(refusal, "retry after").endswith("s")
    assert row(refusal, "order status") == "PAID"
    assert "All steps passed." in text


def test_supervisor_control_stops_and_starts_every_replica(tmp_path: Path) -> None:
    """The demo's supervisorctl control against a real supervisord with stand-in programs:
    a service's one program (`store`, as the stack was) or all its replicas (`promotion-0`,
    `promotion-1`, as the stack with Envoy has them) stop and start; nothing else does."""
    config = tmp_path / "supervisord.conf"
    socket = tmp_path / "s.sock"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(600)'"
    programs = ["promotion-0", "promotion-1", "store", "promotions", "order-0"]
    config.write_text(
        f"[unix_http_server]\nfile={socket}\n"
        f"[supervisord]\nlogfile={tmp_path / 'supervisord.log'}\n"
        f"pidfile={tmp_path / 'supervisord.pid'}\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
        "supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{socket}\n"
        + "".join(
            f"[program:{name}]\ncommand={sleeper}\nstartsecs=0\nstopwaitsecs=5\n"
            for name in programs
        )
    )

    def status() -> dict[str, str]:
        output = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(config), "status"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return {line.split()[0]: line.split()[1] for line in output.splitlines() if line.strip()}

    running = dict.fromkeys(programs, "RUNNING")
    supervisord = subprocess.Popen(
        [str(BIN / "supervisord"), "-n", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: status() == running, timeout=15, message="supervisord up")
        promotion, store = supervisor_control(tmp_path), supervisor_control(tmp_path, "store")
        promotion("stop")
        assert status() == {**running, "promotion-0": "STOPPED", "promotion-1": "STOPPED"}
        promotion("stop")  # stopping a stopped service is fine
        store("stop")
        assert status()["store"] == "STOPPED"
        promotion("start")
        store("start")
        assert status() == running
    finally:
        subprocess.run(  # faster than supervisord's own shutdown, which waits a second each
            [str(BIN / "supervisorctl"), "-c", str(config), "stop", "all"],
            capture_output=True,
            check=False,
        )
        supervisord.terminate()
        supervisord.wait(timeout=30)


def test_supervisor_control_without_a_stack(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="make up"):
        supervisor_control(tmp_path)("stop")
