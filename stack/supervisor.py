"""The local stack: nats-server, the five services (one or more replicas each) and Envoy,
under supervisord.

Envoy plays the mesh (mesh/): the gateway on 8080 and the sidecars through which order reaches
payment and payment reaches promotion, with the policy of the chart's `mesh:` values, over
mTLS with a certificate per service from a local CA (`pki/`, stack/pki.py).
supervisord restarts any process that dies — the local form of Kubernetes' self-healing — and
stops them all together. Everything lives under the run folder (default `.run/`): the
configuration, the logs, the SQLite files and the JetStream store, so data survives `down`
and `up`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml  # type: ignore[import-untyped,unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.issuer import DevIssuer
from mesh.edge import EndUserAuth
from mesh.envoy import RenderOptions, render_envoy_config, write_envoy_config
from mesh.policy import load_policy, parse_fault
from mesh.process import AdminClient, envoy_binary
from mesh.security import GATEWAY, MeshTls, load_identities
from mesh.storefront import PREFIX as STOREFRONT_PREFIX
from mesh.storefront import Storefront
from mesh.topology import DEFAULT_SIDECAR_PORTS, Address, Topology, build_topology
from mesh.tracing import sampling_percent, with_tracing
from services.kit.config import DEFAULT_PORTS, SERVICE_NAMES, default_metrics_port
from services.kit.tracing import endpoint as otlp_endpoint
from stack.nats import NatsAuth
from stack.pki import ensure_certificates

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VALUES = REPO / "helm" / "phoneseller" / "values.yaml"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
#: Replica r of a service listens on its port + REPLICA_PORT_STEP * r (50051, 50061, …).
REPLICA_PORT_STEP = 10
SERVICES_GROUP = "services"


def otel_environment() -> dict[str, str]:
    """The `OTEL_*` variables of this process's environment (docs/observability.md)."""
    return {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


@dataclass
class LocalStack:
    """One local system: where it keeps its files and which ports it uses."""

    run_dir: Path
    nats_port: int = 4322
    gateway_port: int = 8080
    admin_port: int = 9901
    replicas: int = 1
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    sidecar_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIDECAR_PORTS))
    inbound_base_port: int = 15100
    #: Envoy's inbound listener per replica, when not numbered from `inbound_base_port`.
    inbound_ports: dict[str, list[int]] = field(default_factory=dict)
    #: Ports per service, one per replica; when absent, replica r of a service listens on
    #: its default port + REPLICA_PORT_STEP * r.
    instance_ports: dict[str, list[int]] = field(default_factory=dict)
    #: Extra environment per service (e.g. database URLs for promotion and store) and per
    #: replica program (`promotion-1`), applied in that order.
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    replica_env: dict[str, dict[str, str]] = field(default_factory=dict)
    ready_timeout: float = 90.0
    #: Prometheus metrics port per replica, when not derived from its gRPC port (94xx).
    metrics_ports: dict[str, list[int]] = field(default_factory=dict)
    #: `OTEL_*` variables for every service, and with an endpoint Envoy's tracer; by default
    #: those of the environment `make up` runs in (tracing is off without an endpoint).
    otel_env: dict[str, str] = field(default_factory=otel_environment)

    @classmethod
    def from_env(cls) -> LocalStack:
        """The defaults, overridable by `PHONESELLER_LOCAL_*` variables (README)."""
        return cls(
            run_dir=Path(os.environ.get("PHONESELLER_RUN_DIR", REPO / ".run")).resolve(),
            nats_port=_env_int("PHONESELLER_LOCAL_NATS_PORT", 4322),
            gateway_port=_env_int("PHONESELLER_LOCAL_GATEWAY_PORT", 8080),
            admin_port=_env_int("PHONESELLER_LOCAL_ADMIN_PORT", 9901),
            replicas=_env_int("PHONESELLER_LOCAL_REPLICAS", 1),
        )

    # --- layout -------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def envoy_config_path(self) -> Path:
        return self.run_dir / "envoy.yaml"

    @property
    def faults_path(self) -> Path:
        return self.run_dir / "faults.json"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def nats_auth(self) -> NatsAuth:
        """The NATS users: a seed per service (and `admin`) in `nats/`, kept across up/down."""
        return NatsAuth(self.run_dir / "nats")

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def storefront_url(self) -> str:
        """The storefront page, served by the gateway (mesh/storefront.py)."""
        return f"http://{self.gateway}{STOREFRONT_PREFIX}"

    def replica_port(self, service: str, replica: int) -> int:
        if service in self.instance_ports:
            return self.instance_ports[service][replica]
        return self.ports[service] + REPLICA_PORT_STEP * replica

    def metrics_port(self, service: str, replica: int) -> int:
        if service in self.metrics_ports:
            return self.metrics_ports[service][replica]
        return default_metrics_port(self.replica_port(service, replica))

    def metrics_urls(self) -> dict[str, str]:
        """Every replica's Prometheus endpoint, by replica name."""
        return {
            self.replica_name(s, r): f"http://127.0.0.1:{self.metrics_port(s, r)}/metrics"
            for s in SERVICE_NAMES
            for r in range(self.replicas)
        }

    def replica_name(self, service: str, replica: int) -> str:
        """A replica's name: `order-0`, `order-1`, … (its log file, its `replica_env` key)."""
        return f"{service}-{replica}"

    def program(self, service: str, replica: int) -> str:
        """What supervisorctl calls a replica: `services:order-0`.

        All replicas form one supervisord group, because supervisord stops groups one after
        another: as one group they drain in parallel and `down` takes one drain, not ten.
        """
        return f"{SERVICES_GROUP}:{self.replica_name(service, replica)}"

    def programs(self, service: str) -> list[str]:
        return [self.program(service, r) for r in range(self.replicas)]

    def topology(self) -> Topology:
        return build_topology(
            {
                s: [f"127.0.0.1:{self.replica_port(s, r)}" for r in range(self.replicas)]
                for s in SERVICE_NAMES
            },
            gateway_port=self.gateway_port,
            admin_port=self.admin_port,
            sidecar_ports=self.sidecar_ports,
            inbound_base_port=self.inbound_base_port,
            inbound_ports=self.inbound_ports or None,
        )

    # --- configuration ------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        if not self.faults_path.exists():
            return {}
        faults: dict[str, Any] = json.loads(self.faults_path.read_text())
        return faults

    def write_envoy_config(self) -> None:
        """Render the mesh policy (plus any fault set with `stack fault`) for this topology."""
        policy = load_policy(VALUES)
        for service, fault in self.faults().items():
            policy = policy.with_fault(service, parse_fault(fault))
        config = render_envoy_config(
            policy, self.topology(), DESCRIPTORS, options=self.render_options()
        )
        if endpoint := otlp_endpoint(self.otel_env):
            # The proxies' spans beside the services', sampled as the services are.
            config = with_tracing(config, endpoint, sampling_percent(self.otel_env))
        write_envoy_config(config, self.envoy_config_path)

    @property
    def issuer(self) -> DevIssuer:
        """The development issuer (`phoneseller token` signs with its key)."""
        return DevIssuer(self.run_dir / "auth")

    def render_options(self) -> RenderOptions:
        """How the mesh is rendered: the gateway verifies the development issuer's tokens; the
        proxies speak mTLS with the certificates of `pki/` and authorize by identity."""
        values = yaml.safe_load(VALUES.read_text())
        end_users = EndUserAuth.from_values(values, self.issuer.ensure().jwks_path)
        return RenderOptions(end_users=end_users, mtls=self.mesh_tls(), storefront=Storefront())

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    def mesh_tls(self) -> MeshTls:
        """The mesh's identities (mesh/security.py): a local CA and a certificate per service
        and for the gateway in `pki/`, made on first use, kept across up/down, renewed near
        expiry (stack/pki.py). Envoy reads them when it starts."""
        identities = load_identities(VALUES)
        ensure_certificates(self.pki_dir, identities, [*SERVICE_NAMES, GATEWAY])
        return MeshTls.in_dir(self.pki_dir, identities=identities)

    def env_for(self, service: str, replica: int) -> dict[str, str]:
        sidecars = self.topology().sidecars
        return {
            "PHONESELLER_GRPC_PORT": str(self.replica_port(service, replica)),
            "PHONESELLER_DATA_DIR": str(self.run_dir / "data"),
            "PHONESELLER_NATS_URL": self.nats_url,
            "PHONESELLER_METRICS_PORT": str(self.metrics_port(service, replica)),
            **self.otel_env,
            "PHONESELLER_NATS_NKEY_FILE": str(self.nats_auth.seed_file(service)),
            # Calls between services pass the mesh: the sidecar listeners of Envoy.
            **{f"PHONESELLER_{name.upper()}_ADDRESS": str(a) for name, a in sidecars.items()},
            "PYTHONUNBUFFERED": "1",
            **self.service_env.get(service, {}),
            **self.replica_env.get(self.replica_name(service, replica), {}),
        }

    def write_config(self) -> None:
        for folder in (self.logs, self.run_dir / "data", self.run_dir / "jetstream"):
            folder.mkdir(parents=True, exist_ok=True)
        self.write_envoy_config()
        nats_config = self.nats_auth.write_server_config()
        sections = [
            f"[unix_http_server]\nfile={self.socket_path}\n",
            f"[supervisord]\nlogfile={self.logs / 'supervisord.log'}\n"
            f"pidfile={self.run_dir / 'supervisord.pid'}\nchildlogdir={self.logs}\n",
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.socket_path}\n",
            self._program(
                "nats",
                f"{BIN / 'nats-server'} -a 127.0.0.1 -p {self.nats_port} -js "
                f"-sd {self.run_dir / 'jetstream'} -c {nats_config}",
                {},
                priority=10,
            ),
            self._program(
                "envoy",
                f"{envoy_binary()} -c {self.envoy_config_path} -l warning --disable-hot-restart",
                {},
                priority=20,
            ),
        ]
        for service in SERVICE_NAMES:
            for replica in range(self.replicas):
                sections.append(
                    self._program(
                        self.replica_name(service, replica),
                        f"{sys.executable} -m services.kit.main {service}",
                        self.env_for(service, replica),
                        priority=30,
                    )
                )
        replicas = ",".join(
            self.replica_name(s, r) for s in SERVICE_NAMES for r in range(self.replicas)
        )
        sections.append(f"[group:{SERVICES_GROUP}]\nprograms={replicas}\npriority=30\n")
        self.config_path.write_text("\n".join(sections))

    def _program(self, name: str, command: str, env: Mapping[str, str], priority: int) -> str:
        environment = ",".join(f'{k}="{v}"' for k, v in env.items())
        return (
            f"[program:{name}]\ncommand={command}\ndirectory={REPO}\npriority={priority}\n"
            + (f"environment={environment}\n" if environment else "")
            + "autostart=true\nautorestart=true\nstartsecs=1\nstartretries=100\n"
            "stopsignal=TERM\nstopwaitsecs=30\nstopasgroup=true\nkillasgroup=true\n"
            f"stdout_logfile={self.logs / name}.log\nredirect_stderr=true\n"
        )

    # --- control ------------------------------------------------------------------------

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def running(self) -> bool:
        return self.socket_path.exists() and self.supervisorctl("pid").returncode == 0

    def set_fault(self, service: str, fault: Mapping[str, Any] | None) -> None:
        """Inject (or with None, remove) a fault on a destination and restart Envoy with it."""
        faults = self.faults()
        if fault:
            parse_fault(dict(fault))  # refuse a malformed fault before touching anything
            faults[service] = dict(fault)
        else:
            faults.pop(service, None)
        self.faults_path.write_text(json.dumps(faults, indent=2))
        self.write_envoy_config()
        if self.running():
            self.supervisorctl("restart", "envoy")

    # --- health -------------------------------------------------------------------------

    @staticmethod
    def _serving(address: str, service: str = "") -> bool:
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def health(self) -> dict[str, bool]:
        """SERVING per replica (asked directly), and the gateway with every cluster healthy."""
        result = {
            self.replica_name(s, r): self._serving(f"127.0.0.1:{self.replica_port(s, r)}")
            for s in SERVICE_NAMES
            for r in range(self.replicas)
        }
        result["gateway"] = self._serving(self.gateway) and self._mesh_healthy()
        return result

    def _mesh_healthy(self) -> bool:
        admin = AdminClient(Address("127.0.0.1", self.admin_port), timeout=1)
        try:
            if not admin.ready():
                return False
            topology = self.topology()
            return all(
                len(admin.healthy_hosts(f"gateway|{s}")) == len(topology.instances[s])
                for s in SERVICE_NAMES
            )
        except Exception:
            return False

    def wait_ready(self, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < deadline:
            if all(self.health().values()):
                return True
            time.sleep(0.2)
        return False

    # --- commands -----------------------------------------------------------------------

    def print_endpoints(self) -> None:
        # The page first: it is where someone new to the system starts (docs/storefront.md).
        print(f"\nstorefront: {self.storefront_url}   (docs/storefront.md)")
        print(f"\nphoneseller is up ({self.replicas} replica(s) of each service):")
        print(f"  gateway    {self.gateway}   gRPC and HTTP/JSON — use this one")
        for service in SERVICE_NAMES:
            ports = ", ".join(str(self.replica_port(service, r)) for r in range(self.replicas))
            print(f"  {service:<10} 127.0.0.1:{ports}   (direct, behind the mesh)")
        print(f"  envoy      http://127.0.0.1:{self.admin_port}/stats   admin")
        print(f"  metrics    http://127.0.0.1:{self.admin_port}/stats/prometheus   (Envoy)")
        for name, url in self.metrics_urls().items():
            print(f"             {url}   ({name})")
        traces = otlp_endpoint(self.otel_env)
        where = f"OTLP to {traces}" if traces else "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"
        print(f"  traces     {where}")
        admin_key = self.nats_auth.seed_file("admin")
        print(f"  nats       {self.nats_url}   an nkey per service; the admin's: {admin_key}")
        print(f"  logs       {self.logs}")
        print(f"  pki        {self.pki_dir}   the mesh's CA and a certificate per service")
        print("\ntry:")
        print("  .venv/bin/phoneseller demo")
        print(f"  .venv/bin/grpcurl -plaintext {self.gateway} list")
        print(
            f'  curl -s -X POST http://{self.gateway}/v1/orders -d \'{{"customer_id": '
            f'"alice", "item": "Galaxy S25", "quantity": 1, "unit_price": 1200000}}\''
        )
        print()

    def _not_ready(self) -> int:
        print(f"not ready in {self.ready_timeout:.0f}s; see {self.logs}", file=sys.stderr)
        for name, serving in self.health().items():
            print(f"  {name:<12} {'SERVING' if serving else 'NOT_SERVING'}", file=sys.stderr)
        return 1

    def up(self) -> int:
        if self.running():
            print("already running")
        else:
            self.write_config()
            subprocess.run([str(BIN / "supervisord"), "-c", str(self.config_path)], check=True)
        if not self.wait_ready():
            return self._not_ready()
        self.print_endpoints()
        return 0

    def down(self) -> int:
        if not self.running():
            print("not running")
            return 0
        self.supervisorctl("shutdown")
        deadline = time.monotonic() + 60
        while self.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        print("stopped")
        return 0

    def status(self) -> int:
        print(self.supervisorctl("status").stdout)
        for name, serving in self.health().items():
            print(f"  {name:<12} {'SERVING' if serving else 'NOT_SERVING'}")
        return 0

    def run(self) -> int:
        if self.running():
            print("already running in the background; `make down` first", file=sys.stderr)
            return 1
        self.write_config()
        process = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(self.config_path)])
        try:
            if not self.wait_ready():
                return self._not_ready()
            self.print_endpoints()
            print("running; Ctrl-C stops everything")
            process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=90)
        return 0
