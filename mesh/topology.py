"""The local topology: where the one Envoy listens and where the service instances are.

One Envoy process plays every proxy of the cluster picture:

- the ingress gateway: one listener (default 127.0.0.1:8080) for gRPC and HTTP/JSON;
- client-side (outbound) sidecars: one listener per called service, e.g. 127.0.0.1:15052 for
  payment and 127.0.0.1:15053 for promotion. Callers are pointed at them with
  PHONESELLER_PAYMENT_ADDRESS / PHONESELLER_PROMOTION_ADDRESS (`Topology.client_env()`);
- server-side (inbound) sidecars: one listener in front of every service instance (default
  ports from 15100 up). Outbound and gateway clusters send to these; they carry the fault filter
  so that an injected delay makes the destination slow (see docs/mesh.md for why);
- the admin interface (default 127.0.0.1:9901).

Several instances (replicas) of a service stand behind one cluster.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from mesh.policy import Duration
from services.kit.catalog import catalog

__all__ = [
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_GATEWAY_PORT",
    "DEFAULT_GRPC_PORTS",
    "DEFAULT_INBOUND_BASE_PORT",
    "DEFAULT_SIDECAR_PORTS",
    "GRPC_SERVICES",
    "INTERNAL_METHODS",
    "PUBLIC_METHODS",
    "Address",
    "HealthCheck",
    "Instance",
    "Topology",
    "TopologyError",
    "build_topology",
    "default_topology",
    "parse_instances",
]


class TopologyError(ValueError):
    """The topology is inconsistent (e.g. two listeners on one port)."""


_CATALOG = catalog()

# The gRPC service behind each service name (packages `phoneseller.<ctx>.v1`), from the chart's
# values (services/kit/catalog.py): the one list of the services.
GRPC_SERVICES: Final[Mapping[str, str]] = _CATALOG.grpc_services

# Called only inside the mesh, by the callers the values name; the gateway refuses them
# (PERMISSION_DENIED / HTTP 403), as it refuses every method it does not expose.
INTERNAL_METHODS: Final[tuple[str, ...]] = _CATALOG.internal_paths

#: What the gateway exposes: the values' publicMethods (an allow-list) and the health check.
PUBLIC_METHODS: Final[tuple[str, ...]] = (*_CATALOG.public_paths, "/grpc.health.v1.Health/Check")

DEFAULT_GRPC_PORTS: Final[Mapping[str, int]] = _CATALOG.local_ports
#: A client-side sidecar listener for each service that others call: 15000 + its port - 50000.
DEFAULT_SIDECAR_PORTS: Final[Mapping[str, int]] = {
    spec.name: 15000 + spec.local_port % 1000 for spec in _CATALOG if spec.callers
}
DEFAULT_GATEWAY_PORT: Final = 8080
DEFAULT_ADMIN_PORT: Final = 9901
DEFAULT_INBOUND_BASE_PORT: Final = 15100
DEFAULT_HOST: Final = "127.0.0.1"


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse "host:port" ("127.0.0.1:50051", "[::1]:50051", "localhost:50051")."""
        t = text.strip()
        host, sep, port = t.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise TopologyError(f"{text!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        p = int(port)
        if not 0 < p < 65536:
            raise TopologyError(f"{text!r}: port out of range")
        return cls(host, p)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Instance:
    """One running replica of a service, and the inbound sidecar listener in front of it."""

    service: str
    index: int
    address: Address  # where the service process serves gRPC
    inbound: Address  # Envoy's server-side listener that forwards to `address`

    @property
    def name(self) -> str:
        """The endpoint hostname Envoy shows in /clusters, e.g. "promotion-0"."""
        return f"{self.service}-{self.index}"


@dataclass(frozen=True)
class HealthCheck:
    """Envoy's active gRPC health check of each instance (grpc.health.v1, service "").

    Istio has no active health check: in a cluster the readiness probe removes a NOT_SERVING pod
    from the endpoints. Locally this check plays that part, so a draining replica stops getting
    traffic within about `interval * unhealthy_threshold` (+ `timeout` if it hangs).
    """

    interval: Duration = field(default_factory=lambda: Duration.of_millis(1000))
    timeout: Duration = field(default_factory=lambda: Duration.of_millis(1000))
    no_traffic_interval: Duration = field(default_factory=lambda: Duration.of_millis(1000))
    unhealthy_threshold: int = 1
    healthy_threshold: int = 1


@dataclass(frozen=True)
class Topology:
    instances: Mapping[str, tuple[Instance, ...]]
    gateway: Address = field(default_factory=lambda: Address(DEFAULT_HOST, DEFAULT_GATEWAY_PORT))
    admin: Address = field(default_factory=lambda: Address(DEFAULT_HOST, DEFAULT_ADMIN_PORT))
    # Client-side sidecar listener per called service (east-west traffic).
    sidecars: Mapping[str, Address] = field(default_factory=dict)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    grpc_services: Mapping[str, str] = field(default_factory=lambda: dict(GRPC_SERVICES))
    #: The methods the gateway exposes, by service (the values' publicMethods): all it routes.
    public_methods: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {spec.name: spec.public_methods for spec in _CATALOG}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        seen: dict[Address, str] = {}

        def claim(addr: Address, what: str) -> None:
            if addr in seen:
                raise TopologyError(f"{addr} is used by both {seen[addr]} and {what}")
            seen[addr] = what

        claim(self.gateway, "the gateway")
        claim(self.admin, "the admin interface")
        for name, addr in self.sidecars.items():
            claim(addr, f"the {name} sidecar listener")
        for name, insts in self.instances.items():
            for i, inst in enumerate(insts):
                if inst.service != name or inst.index != i:
                    raise TopologyError(f"instance {inst} is filed under {name}[{i}]")
                claim(inst.inbound, f"the inbound listener of {inst.name}")
        for insts in self.instances.values():
            for inst in insts:
                if inst.address in seen:
                    raise TopologyError(
                        f"{inst.name} at {inst.address} collides with {seen[inst.address]}"
                    )

    @property
    def services(self) -> list[str]:
        return sorted(self.instances)

    def instance(self, service: str, index: int = 0) -> Instance:
        return self.instances[service][index]

    def all_instances(self) -> Iterable[Instance]:
        for name in sorted(self.instances):
            yield from self.instances[name]

    def client_env(self) -> dict[str, str]:
        """Environment for the services: PHONESELLER_<SERVICE>_ADDRESS = its sidecar listener."""
        return {
            f"PHONESELLER_{name.upper()}_ADDRESS": str(addr)
            for name, addr in sorted(self.sidecars.items())
        }

    def sidecar(self, service: str) -> Address:
        return self.sidecars[service]


def parse_instances(spec: str | Sequence[str]) -> dict[str, list[Address]]:
    """Parse "order=127.0.0.1:50051,payment=127.0.0.1:50052,payment=127.0.0.1:50062".

    Repeating a service adds replicas. Also accepts a list of such strings (repeated options).
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, list[Address]] = {}
    for part in parts:
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, addr = item.partition("=")
            if not sep or not name.strip():
                raise TopologyError(f"{item!r}: expected service=host:port")
            out.setdefault(name.strip(), []).append(Address.parse(addr))
    return out


def build_topology(
    instances: Mapping[str, Sequence[Address | str]] | None = None,
    *,
    host: str = DEFAULT_HOST,
    gateway_port: int = DEFAULT_GATEWAY_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    sidecar_ports: Mapping[str, int] | None = None,
    inbound_ports: Mapping[str, Sequence[int]] | None = None,
    inbound_base_port: int = DEFAULT_INBOUND_BASE_PORT,
    health_check: HealthCheck | None = None,
) -> Topology:
    """Build a topology. Defaults: one instance per service on 127.0.0.1:50051..50055, gateway
    8080, admin 9901, sidecars payment 15052 and promotion 15053, inbound listeners numbered from
    `inbound_base_port` (services in name order, replicas in order) unless `inbound_ports` names
    them."""
    if instances is None:
        instances = {n: [Address(host, p)] for n, p in DEFAULT_GRPC_PORTS.items()}
    if sidecar_ports is None:
        sidecar_ports = DEFAULT_SIDECAR_PORTS
    next_port = inbound_base_port
    built: dict[str, tuple[Instance, ...]] = {}
    for name in sorted(instances):
        addrs = [a if isinstance(a, Address) else Address.parse(a) for a in instances[name]]
        explicit = list((inbound_ports or {}).get(name, ()))
        if explicit and len(explicit) != len(addrs):
            raise TopologyError(f"{name}: {len(addrs)} instances but {len(explicit)} inbound ports")
        insts: list[Instance] = []
        for i, addr in enumerate(addrs):
            if explicit:
                port = explicit[i]
            else:
                port = next_port
                next_port += 1
            insts.append(Instance(name, i, addr, Address(host, port)))
        built[name] = tuple(insts)
    return Topology(
        instances=built,
        gateway=Address(host, gateway_port),
        admin=Address(host, admin_port),
        sidecars={n: Address(host, p) for n, p in sidecar_ports.items()},
        health_check=health_check or HealthCheck(),
    )


def default_topology() -> Topology:
    """The documented local defaults (docs/configuration.md)."""
    return build_topology()
