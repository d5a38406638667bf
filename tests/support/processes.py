"""Service processes started by tests: `phoneseller-server` with an environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.nats_server import NatsServer
from tests.support.ports import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int:
    """The grpc.health.v1 status of `service` at `address` (raises if unreachable)."""
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        status: int = response.status
        return status


def is_serving(address: str, service: str = "") -> bool:
    try:
        serving: bool = health_status(address, service) == health_pb2.HealthCheckResponse.SERVING
        return serving
    except grpc.RpcError:
        return False


class ServiceProcess:
    """One `phoneseller-server SERVICE` process with its own port, data folder and log, that
    connects to `nats` as its service's NATS user."""

    def __init__(
        self,
        service: str,
        run_dir: Path,
        nats: NatsServer,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.run_dir = run_dir
        self.port = port or free_port()
        self.log_path = run_dir / f"{service}-{self.port}.log"
        self.env = {
            **os.environ,
            "PHONESELLER_GRPC_PORT": str(self.port),
            "PHONESELLER_DATA_DIR": str(run_dir / "data"),
            "PHONESELLER_NATS_URL": nats.url,
            "PHONESELLER_NATS_NKEY_FILE": nats.nkey_file(service),
            "PHONESELLER_SHUTDOWN_DRAIN_SECONDS": "0",
            "PHONESELLER_LOG_LEVEL": "INFO",
            # No metrics endpoint unless a test asks: tests run side by side on one machine.
            "PHONESELLER_METRICS_PORT": "0",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServiceProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.kit.main", self.service],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service} exited: {self.log_tail()}")
            return is_serving(self.address)

        wait_until(ready, timeout=timeout, interval=0.1, message=f"{self.service} SERVING")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
