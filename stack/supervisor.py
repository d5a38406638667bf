"""Writes the supervisord configuration of the local stack and drives supervisord.

supervisord (from PyPI) restarts any process that dies — the local form of Kubernetes'
self-healing — and stops them all together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.config import DEFAULT_PORTS, SERVICE_NAMES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class LocalStack:
    run_dir: Path
    nats_port: int = 4322
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    ready_timeout: float = 60.0

    @classmethod
    def from_env(cls) -> LocalStack:
        return cls(
            run_dir=Path(os.environ.get("PHONESELLER_RUN_DIR", REPO / ".run")).resolve(),
            nats_port=int(os.environ.get("PHONESELLER_LOCAL_NATS_PORT", "4322")),
        )

    @property
    def config_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def service_env(self, service: str) -> dict[str, str]:
        return {
            "PHONESELLER_GRPC_PORT": str(self.ports[service]),
            "PHONESELLER_DATA_DIR": str(self.run_dir / "data"),
            "PHONESELLER_NATS_URL": self.nats_url,
            "PHONESELLER_PAYMENT_ADDRESS": f"127.0.0.1:{self.ports['payment']}",
            "PHONESELLER_PROMOTION_ADDRESS": f"127.0.0.1:{self.ports['promotion']}",
            "PYTHONUNBUFFERED": "1",
        }

    def write_config(self) -> None:
        logs = self.run_dir / "logs"
        for folder in (logs, self.run_dir / "data", self.run_dir / "jetstream"):
            folder.mkdir(parents=True, exist_ok=True)
        sections = [
            f"[unix_http_server]\nfile={self.socket_path}\n",
            f"[supervisord]\nlogfile={logs / 'supervisord.log'}\n"
            f"pidfile={self.run_dir / 'supervisord.pid'}\nchildlogdir={logs}\n",
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.socket_path}\n",
            self._program(
                "nats",
                f"{BIN / 'nats-server'} -a 127.0.0.1 -p {self.nats_port} -js "
                f"-sd {self.run_dir / 'jetstream'}",
                {},
                logs,
            ),
        ]
        for service in SERVICE_NAMES:
            sections.append(
                self._program(
                    service,
                    f"{sys.executable} -m services.kit.main {service}",
                    self.service_env(service),
                    logs,
                )
            )
        self.config_path.write_text("\n".join(sections))

    @staticmethod
    def _program(name: str, command: str, env: dict[str, str], logs: Path) -> str:
        environment = ",".join(f'{k}="{v}"' for k, v in env.items())
        return (
            f"[program:{name}]\ncommand={command}\ndirectory={REPO}\n"
            + (f"environment={environment}\n" if environment else "")
            + "autostart=true\nautorestart=true\nstartsecs=1\nstartretries=100\n"
            "stopsignal=TERM\nstopwaitsecs=20\nstopasgroup=true\nkillasgroup=true\n"
            f"stdout_logfile={logs / name}.log\nredirect_stderr=true\n"
        )

    def _supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _running(self) -> bool:
        return self.socket_path.exists() and self._supervisorctl("pid").returncode == 0

    def health(self) -> dict[str, bool]:
        result = {}
        for service in SERVICE_NAMES:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.ports[service]}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                result[service] = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                result[service] = False
        return result

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if all(self.health().values()):
                return True
            time.sleep(0.2)
        return False

    def print_endpoints(self) -> None:
        print("\nphoneseller is up:")
        for service in SERVICE_NAMES:
            print(f"  {service:<10} grpc  127.0.0.1:{self.ports[service]}")
        print(f"  nats       {self.nats_url}")
        print(f"  logs       {self.run_dir / 'logs'}")
        print(
            '\ntry:  .venv/bin/grpcurl -plaintext -d \'{"customer_id": "alice", "item": '
            '"Galaxy S25", "quantity": 1, "unit_price": 1200000}\' '
            f"127.0.0.1:{self.ports['order']} phoneseller.order.v1.OrderService/PlaceOrder\n"
        )

    def up(self) -> int:
        if self._running():
            print("already running")
        else:
            self.write_config()
            subprocess.run([str(BIN / "supervisord"), "-c", str(self.config_path)], check=True)
        if not self.wait_ready():
            print("not ready in time; see", self.run_dir / "logs", file=sys.stderr)
            print(self.health(), file=sys.stderr)
            return 1
        self.print_endpoints()
        return 0

    def down(self) -> int:
        if not self._running():
            print("not running")
            return 0
        self._supervisorctl("shutdown")
        deadline = time.monotonic() + 30
        while self.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        print("stopped")
        return 0

    def status(self) -> int:
        print(self._supervisorctl("status").stdout)
        for service, serving in self.health().items():
            print(f"  {service:<10} {'SERVING' if serving else 'NOT_SERVING'}")
        return 0

    def run(self) -> int:
        if self._running():
            print("already running in the background; `make down` first", file=sys.stderr)
            return 1
        self.write_config()
        process = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(self.config_path)])
        try:
            if not self.wait_ready():
                print("not ready in time; see", self.run_dir / "logs", file=sys.stderr)
                return 1
            self.print_endpoints()
            print("running; Ctrl-C stops everything")
            process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        return 0
