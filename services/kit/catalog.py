"""The services, as the chart's values list them: the one list everything else reads.

`helm/phoneseller/values.yaml` holds each service once under `services:` — its gRPC service,
its port on one machine, the methods the gateway exposes (and to which end-user roles) and
which other services may call which of its internal methods. The chart renders Deployments,
Services, the ingress gateway's allow-list and the AuthorizationPolicies from it; `mesh/`
renders the local Envoy from it; `stack/` starts the processes on its ports; the kit's
configuration takes its defaults from it.
A method that no entry lists is closed: the gateway refuses it and no service may call it.

In a container the chart sets every setting explicitly, so the values file (which is not
installed with the package) is only read where the repository is: on a developer's machine,
in the tests and in the tools that render the mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml  # type: ignore[import-untyped,unused-ignore]

#: The end-user roles a bearer token may carry (services/kit/identity.py says what each may do).
ROLES = ("customer", "dealer", "operator")
#: The chart's values, when running from the repository.
VALUES = Path(__file__).resolve().parents[2] / "helm" / "phoneseller" / "values.yaml"


class CatalogError(ValueError):
    """The values' `services:` list is malformed or absent."""


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the system, as the values describe it."""

    name: str
    #: The fully qualified gRPC service, e.g. phoneseller.order.v1.OrderService.
    grpc_service: str
    #: Where it listens on one machine (`make run`; replicas add 10 each). In a cluster every
    #: pod listens on the chart's one gRPC port behind its own Service.
    local_port: int
    #: Methods the ingress gateway exposes (and only these), with the end-user roles whose
    #: tokens may call each.
    public_roles: Mapping[str, tuple[str, ...]]
    #: Internal methods by the service allowed to call them.
    callers: Mapping[str, tuple[str, ...]]

    def path(self, method: str) -> str:
        """The gRPC path of one of this service's methods: /package.Service/Method."""
        return f"/{self.grpc_service}/{method}"

    @property
    def public_methods(self) -> tuple[str, ...]:
        return tuple(self.public_roles)

    @property
    def public_paths(self) -> tuple[str, ...]:
        return tuple(self.path(m) for m in self.public_methods)

    @property
    def internal_paths(self) -> tuple[str, ...]:
        """Methods other services call (in the order the values name them, each once)."""
        seen = dict.fromkeys(self.path(m) for ms in self.callers.values() for m in ms)
        return tuple(seen)

    def callers_of(self, method: str) -> tuple[str, ...]:
        """The services allowed to call `method`."""
        return tuple(caller for caller, ms in self.callers.items() if method in ms)


@dataclass(frozen=True)
class Catalog:
    """Every service, in the values' order."""

    services: Mapping[str, ServiceSpec]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.services)

    def __getitem__(self, name: str) -> ServiceSpec:
        return self.services[name]

    def __iter__(self) -> Iterator[ServiceSpec]:
        return iter(self.services.values())

    @property
    def public_paths(self) -> tuple[str, ...]:
        return tuple(p for spec in self for p in spec.public_paths)

    @property
    def internal_paths(self) -> tuple[str, ...]:
        return tuple(p for spec in self for p in spec.internal_paths)

    @property
    def roles_by_path(self) -> dict[str, tuple[str, ...]]:
        """The end-user roles that may call each public method, by gRPC path."""
        return {spec.path(m): roles for spec in self for m, roles in spec.public_roles.items()}

    def calls(self) -> Iterator[tuple[str, str, str]]:
        """(caller, callee, method) for every internal call the values allow."""
        for spec in self:
            for caller, methods in spec.callers.items():
                for method in methods:
                    yield caller, spec.name, method

    def callees_of(self, caller: str) -> tuple[str, ...]:
        """The services `caller` calls, in the values' order."""
        return tuple(spec.name for spec in self if caller in spec.callers)

    @property
    def grpc_services(self) -> dict[str, str]:
        return {spec.name: spec.grpc_service for spec in self}

    @property
    def local_ports(self) -> dict[str, int]:
        return {spec.name: spec.local_port for spec in self}


def parse_catalog(values: Mapping[str, object]) -> Catalog:
    """The catalog of a values mapping (strict: a typo must not open or close a method)."""
    raw = values.get("services")
    if not isinstance(raw, Mapping) or not raw:
        raise CatalogError("the values have no `services:` mapping")
    specs: dict[str, ServiceSpec] = {}
    for name, entry in raw.items():
        where = f"services.{name}"
        if not isinstance(entry, Mapping):
            raise CatalogError(f"{where} must be a mapping")
        grpc_service = entry.get("grpcService")
        port = entry.get("localPort")
        public = entry.get("publicMethods", {})
        callers = entry.get("callers", {})
        if not isinstance(grpc_service, str) or grpc_service.count(".") < 1:
            raise CatalogError(f"{where}.grpcService must name a gRPC service")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise CatalogError(f"{where}.localPort must be a port number")
        if not isinstance(public, Mapping):
            raise CatalogError(f"{where}.publicMethods must map method names to roles")
        for method, roles in public.items():
            if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
                raise CatalogError(
                    f"{where}.publicMethods.{method} must list roles among {', '.join(ROLES)}"
                )
        if not isinstance(callers, Mapping):
            raise CatalogError(f"{where}.callers must map services to method lists")
        for caller, methods in callers.items():
            if caller not in raw:
                raise CatalogError(f"{where}.callers names an unknown service {caller!r}")
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise CatalogError(f"{where}.callers.{caller} must be a list of method names")
            if overlap := set(methods) & set(public):
                raise CatalogError(f"{where}: {sorted(overlap)} both public and internal")
        specs[str(name)] = ServiceSpec(
            name=str(name),
            grpc_service=grpc_service,
            local_port=port,
            public_roles={str(m): tuple(roles) for m, roles in public.items()},
            callers={str(c): tuple(ms) for c, ms in callers.items()},
        )
    ports = [s.local_port for s in specs.values()]
    if len(set(ports)) != len(ports):
        raise CatalogError("two services have the same localPort")
    return Catalog(specs)


def load_catalog(path: Path = VALUES) -> Catalog:
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"cannot read the chart's values at {path}: {exc}") from None
    if not isinstance(values, Mapping):
        raise CatalogError(f"{path} is not a mapping")
    return parse_catalog(values)


@functools.cache
def catalog() -> Catalog:
    """The repository's catalog (read once)."""
    return load_catalog()


def available() -> bool:
    """Whether the values file is here (a repository checkout, not an installed image)."""
    return VALUES.is_file()
