"""The mesh policy: the `mesh:` section of helm/phoneseller/values.yaml as typed, validated data.

Field names follow Istio (HTTPRoute, HTTPRetry, HTTPFaultInjection, TrafficPolicy), so the values
read like the VirtualService and DestinationRule the chart renders from them:

    mesh:
      destinations:
        <service>:
          routes:
            - {name, methods?, subset?, timeout?, retries?: {attempts, perTryTimeout?, retryOn?,
               backoff?}}
          trafficPolicy: {connectionPool?: {tcp?, http?}, outlierDetection?, loadBalancer?}
          subsets?:
            <subset>: {trafficPolicy?: {...}}
          fault:
            delay?: {fixedDelay, percentage?: {value}}
            abort?: {httpStatus | grpcStatus, percentage?: {value}}

Validation is strict (unknown keys, wrong types and values Istio's webhook would reject raise
`PolicyError` naming the offending path) so that a typo never silently turns a protection off.
For the same reason a route must name a subset that exists, and every subset must be named by a
route (a subset's policy applies only to traffic a route sends to it). Unset and zero are kept
apart (`None` = unset) because Istio renders them differently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "GRPC_STATUS_CODES",
    "RETRY_ON_TOKENS",
    "ConnectionPool",
    "Destination",
    "Duration",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "HttpPool",
    "MeshPolicy",
    "OutlierDetection",
    "PolicyError",
    "Retries",
    "Route",
    "Subset",
    "TcpPool",
    "TrafficPolicy",
    "fault_cli_arg",
    "fault_from_cli",
    "fault_to_values",
    "load_policy",
    "parse_duration",
    "parse_fault",
    "parse_policy",
]


class PolicyError(ValueError):
    """The mesh values are invalid; the message names the offending path."""


# --------------------------------------------------------------------------------------------
# Durations


_NS_PER_UNIT: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


@dataclass(frozen=True, order=True)
class Duration:
    """A non-negative duration held exactly, in nanoseconds.

    Parsed from Istio's (Go `time.ParseDuration`) notation: "610ms", "1s", "1m30s", "0.5s".
    """

    nanos: int

    @classmethod
    def parse(cls, text: str) -> Duration:
        return parse_duration(text)

    @classmethod
    def of_millis(cls, millis: int) -> Duration:
        return cls(millis * 1_000_000)

    @property
    def seconds(self) -> float:
        return self.nanos / 1e9

    @property
    def millis(self) -> float:
        return self.nanos / 1e6

    def envoy(self) -> str:
        """The protobuf JSON form Envoy reads: "0.610s", "1s", "0s"."""
        whole, frac = divmod(self.nanos, 1_000_000_000)
        if frac == 0:
            return f"{whole}s"
        return f"{whole}.{frac:09d}".rstrip("0") + "s"

    def __str__(self) -> str:
        if self.nanos % 1_000_000_000 == 0:
            return f"{self.nanos // 1_000_000_000}s"
        if self.nanos % 1_000_000 == 0:
            return f"{self.nanos // 1_000_000}ms"
        return self.envoy()


def parse_duration(text: str) -> Duration:
    """Parse a Go/Istio duration string exactly ("610ms" -> 610_000_000 ns). No sign allowed."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string like '610ms' or '1s', got {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s == "0":
        return Duration(0)
    pos = 0
    total = Fraction(0)
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (use e.g. '610ms', '1s', '1m30s')")
        total += Fraction(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    if total.denominator != 1:
        raise ValueError(f"duration {text!r} is finer than a nanosecond")
    return Duration(int(total))


# --------------------------------------------------------------------------------------------
# Policy data


# Envoy `retry_on` tokens (HTTP and gRPC); integers in retryOn are HTTP status codes (Istio).
RETRY_ON_TOKENS: Final[frozenset[str]] = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

# The gRPC status names Istio accepts in fault.abort.grpcStatus, and their codes.
GRPC_STATUS_CODES: Final[dict[str, int]] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

_METHOD_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_ROUTE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# Istio's webhook requires subset names to be DNS-1123 labels.
_SUBSET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Retries:
    """Istio HTTPRetry. `attempts == 0` disables retries (no Envoy retry policy)."""

    attempts: int
    per_try_timeout: Duration | None = None
    retry_on: str | None = None
    backoff: Duration | None = None
    retry_ignore_previous_hosts: bool | None = None


@dataclass(frozen=True)
class Route:
    """One Istio HTTPRoute of a destination: the methods it matches (none = every method)."""

    name: str
    methods: tuple[str, ...] = ()
    timeout: Duration | None = None
    # None = `retries` not set: Istio applies its default policy (2 attempts).
    retries: Retries | None = None
    # The destination's subset the route sends to (`destination.subset`); None = the host, with
    # the destination's top-level traffic policy.
    subset: str | None = None

    @property
    def is_default(self) -> bool:
        return not self.methods


@dataclass(frozen=True)
class TcpPool:
    max_connections: int | None = None
    connect_timeout: Duration | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


@dataclass(frozen=True)
class HttpPool:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: Duration | None = None
    max_concurrent_streams: int | None = None
    h2_upgrade_policy: str | None = None


@dataclass(frozen=True)
class ConnectionPool:
    tcp: TcpPool | None = None
    http: HttpPool | None = None


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int = 0  # 0 = unset (Envoy default 10)
    min_health_percent: int = 0  # Istio default 0: panic mode off
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    load_balancer: str | None = None  # loadBalancer.simple; None = Istio default LEAST_REQUEST

    def overridden_by(self, subset: TrafficPolicy) -> TrafficPolicy:
        """The policy of a subset's cluster, merged as Istio merges it: every field the subset
        sets replaces the destination's field whole (a subset's `connectionPool` with only
        `http` drops the destination's `tcp`), every field it leaves unset is inherited."""
        return TrafficPolicy(
            connection_pool=(
                subset.connection_pool
                if subset.connection_pool is not None
                else self.connection_pool
            ),
            outlier_detection=(
                subset.outlier_detection
                if subset.outlier_detection is not None
                else self.outlier_detection
            ),
            load_balancer=(
                subset.load_balancer if subset.load_balancer is not None else self.load_balancer
            ),
        )


@dataclass(frozen=True)
class Subset:
    """A DestinationRule subset: its own Envoy cluster, so its own circuit breaker and outlier
    detection, for the routes that name it. It selects every pod of the service (the chart gives
    it the service's selector labels): here a subset splits policy, not pods."""

    name: str
    traffic_policy: TrafficPolicy = field(default_factory=TrafficPolicy)


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay: Duration
    percentage: float | None = None  # percentage.value, 0..100
    percent: int = 0  # deprecated integer `percent`, used by Istio only without `percentage`


@dataclass(frozen=True)
class FaultAbort:
    http_status: int | None = None
    grpc_status: str | None = None
    percentage: float | None = None

    @property
    def grpc_code(self) -> int | None:
        return None if self.grpc_status is None else GRPC_STATUS_CODES[self.grpc_status]


@dataclass(frozen=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @property
    def empty(self) -> bool:
        return self.delay is None and self.abort is None


@dataclass(frozen=True)
class Destination:
    """The policy for calls to one service: its routes, traffic policy and fault."""

    name: str
    routes: tuple[Route, ...]
    traffic_policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    fault: Fault | None = None
    subsets: Mapping[str, Subset] = field(default_factory=dict)

    def route_for(self, method: str) -> Route | None:
        """The route a call of `method` takes (first match wins, as in Istio)."""
        for route in self.routes:
            if route.is_default or method in route.methods:
                return route
        return None

    def traffic_policy_for(self, subset: str | None) -> TrafficPolicy:
        """The traffic policy of the cluster a route to `subset` (None = the host) uses."""
        if subset is None:
            return self.traffic_policy
        return self.traffic_policy.overridden_by(self.subsets[subset].traffic_policy)

    def policy_for(self, method: str) -> TrafficPolicy:
        """The traffic policy (connection pool, outlier detection) a call of `method` meets."""
        route = self.route_for(method)
        return self.traffic_policy_for(None if route is None else route.subset)


@dataclass(frozen=True)
class MeshPolicy:
    destinations: Mapping[str, Destination]

    def __getitem__(self, name: str) -> Destination:
        return self.destinations[name]

    def with_fault(self, destination: str, fault: Fault | None) -> MeshPolicy:
        """A copy of this policy with `destination`'s fault replaced (None or empty = no fault)."""
        if destination not in self.destinations:
            raise PolicyError(f"no destination {destination!r} in the mesh policy")
        dests = dict(self.destinations)
        dests[destination] = replace(
            dests[destination], fault=None if fault is None or fault.empty else fault
        )
        return MeshPolicy(destinations=dests)


# --------------------------------------------------------------------------------------------
# Parsing


class _Node:
    """A mapping being read, with its path for error messages and a check for unknown keys."""

    def __init__(self, value: object, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise PolicyError(f"{path}: expected a mapping, got {type(value).__name__}")
        self.value: Mapping[str, Any] = value
        self.path = path
        self.seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.value and self.value[key] is not None

    def raw(self, key: str) -> object:
        self.seen.add(key)
        return self.value.get(key)

    def child(self, key: str) -> _Node | None:
        v = self.raw(key)
        return None if v is None else _Node(v, f"{self.path}.{key}")

    def int_(self, key: str, lo: int = 0, hi: int = 2**32 - 1) -> int | None:
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise PolicyError(f"{self.path}.{key}: expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise PolicyError(f"{self.path}.{key}: {v} is outside {lo}..{hi}")
        return v

    def bool_(self, key: str) -> bool | None:
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise PolicyError(f"{self.path}.{key}: expected true or false, got {v!r}")
        return v

    def str_(self, key: str) -> str | None:
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise PolicyError(f"{self.path}.{key}: expected a string, got {v!r}")
        return v

    def duration(self, key: str, *, allow_zero: bool = False) -> Duration | None:
        v = self.raw(key)
        if v is None:
            return None
        try:
            d = parse_duration(v)  # type: ignore[arg-type]
        except ValueError as e:
            raise PolicyError(f"{self.path}.{key}: {e}") from None
        # As Istio's webhook: at least 1ms, whole milliseconds.
        if d.nanos == 0 and allow_zero:
            return d
        if d.nanos < 1_000_000:
            raise PolicyError(f"{self.path}.{key}: {v!r} must be at least 1ms")
        if d.nanos % 1_000_000:
            raise PolicyError(f"{self.path}.{key}: {v!r}: only millisecond precision is supported")
        return d

    def percentage(self, key: str) -> float | None:
        node = self.child(key)
        if node is None:
            return None
        v = node.raw("value")
        node.done()
        if v is None:
            v = 0.0
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise PolicyError(f"{self.path}.{key}.value: expected a number, got {v!r}")
        if not 0 <= v <= 100:
            raise PolicyError(f"{self.path}.{key}.value: {v} is outside 0..100")
        return float(v)

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            raise PolicyError(f"{self.path}: unknown or unsupported field(s) {', '.join(unknown)}")


def _parse_retries(node: _Node) -> Retries:
    attempts = node.int_("attempts", 0, 2**31 - 1)
    if attempts is None:
        raise PolicyError(f"{node.path}.attempts: required")
    retry_on = node.str_("retryOn")
    if retry_on is not None:
        for token in (t.strip() for t in retry_on.split(",")):
            if not token:
                continue
            if token.isdigit() and 100 <= int(token) <= 599:
                continue
            if token not in RETRY_ON_TOKENS:
                raise PolicyError(f"{node.path}.retryOn: unknown retry condition {token!r}")
    out = Retries(
        attempts=attempts,
        per_try_timeout=node.duration("perTryTimeout"),
        retry_on=retry_on if retry_on else None,
        backoff=node.duration("backoff"),
        retry_ignore_previous_hosts=node.bool_("retryIgnorePreviousHosts"),
    )
    node.done()
    return out


def _parse_route(value: object, path: str) -> Route:
    node = _Node(value, path)
    name = node.str_("name")
    if not name or not _ROUTE_NAME.match(name):
        raise PolicyError(f"{path}.name: required, lowercase letters, digits, '-' or '.'")
    raw_methods = node.raw("methods")
    methods: tuple[str, ...] = ()
    if raw_methods is not None:
        if not isinstance(raw_methods, list) or not raw_methods:
            raise PolicyError(f"{path}.methods: expected a non-empty list of RPC method names")
        for m in raw_methods:
            if not isinstance(m, str) or not _METHOD_NAME.match(m):
                raise PolicyError(f"{path}.methods: {m!r} is not an RPC method name like 'Pay'")
        methods = tuple(raw_methods)
        if len(set(methods)) != len(methods):
            raise PolicyError(f"{path}.methods: a method is listed twice")
    subset = node.str_("subset")
    if subset is not None and not _SUBSET_NAME.fullmatch(subset):
        raise PolicyError(f"{path}.subset: {subset!r} is not a subset name (a DNS-1123 label)")
    retries_node = node.child("retries")
    route = Route(
        name=name,
        methods=methods,
        timeout=node.duration("timeout", allow_zero=True),
        retries=None if retries_node is None else _parse_retries(retries_node),
        subset=subset,
    )
    node.done()
    return route


def _parse_traffic_policy(node: _Node) -> TrafficPolicy:
    pool: ConnectionPool | None = None
    cp = node.child("connectionPool")
    if cp is not None:
        tcp: TcpPool | None = None
        http: HttpPool | None = None
        t = cp.child("tcp")
        if t is not None:
            tcp = TcpPool(
                max_connections=t.int_("maxConnections", 0, 2**31 - 1),
                connect_timeout=t.duration("connectTimeout"),
                max_connection_duration=t.duration("maxConnectionDuration"),
                idle_timeout=t.duration("idleTimeout"),
            )
            t.done()
        h = cp.child("http")
        if h is not None:
            upgrade = h.str_("h2UpgradePolicy")
            if upgrade not in (None, "DEFAULT", "UPGRADE"):
                raise PolicyError(
                    f"{h.path}.h2UpgradePolicy: gRPC needs HTTP/2; {upgrade!r} is not supported"
                )
            http = HttpPool(
                http1_max_pending_requests=h.int_("http1MaxPendingRequests", 0, 2**31 - 1),
                http2_max_requests=h.int_("http2MaxRequests", 0, 2**31 - 1),
                max_requests_per_connection=h.int_("maxRequestsPerConnection", 0, 2**31 - 1),
                max_retries=h.int_("maxRetries", 0, 2**31 - 1),
                idle_timeout=h.duration("idleTimeout"),
                max_concurrent_streams=h.int_("maxConcurrentStreams", 0, 2**31 - 1),
                h2_upgrade_policy=upgrade,
            )
            h.done()
        cp.done()
        pool = ConnectionPool(tcp=tcp, http=http)
    outlier: OutlierDetection | None = None
    od = node.child("outlierDetection")
    if od is not None:
        outlier = OutlierDetection(
            consecutive_5xx_errors=od.int_("consecutive5xxErrors"),
            consecutive_gateway_errors=od.int_("consecutiveGatewayErrors"),
            interval=od.duration("interval"),
            base_ejection_time=od.duration("baseEjectionTime"),
            max_ejection_percent=od.int_("maxEjectionPercent", 0, 100) or 0,
            min_health_percent=od.int_("minHealthPercent", 0, 100) or 0,
            split_external_local_origin_errors=od.bool_("splitExternalLocalOriginErrors") or False,
            consecutive_local_origin_failures=od.int_("consecutiveLocalOriginFailures"),
        )
        od.done()
    lb: str | None = None
    lbn = node.child("loadBalancer")
    if lbn is not None:
        lb = lbn.str_("simple")
        if lb not in (None, "LEAST_REQUEST", "LEAST_CONN", "ROUND_ROBIN", "RANDOM"):
            raise PolicyError(f"{lbn.path}.simple: unsupported load balancer {lb!r}")
        lbn.done()
    node.done()
    return TrafficPolicy(connection_pool=pool, outlier_detection=outlier, load_balancer=lb)


def _parse_subsets(node: _Node) -> dict[str, Subset]:
    subsets: dict[str, Subset] = {}
    for name, value in node.value.items():
        if not isinstance(name, str) or not _SUBSET_NAME.fullmatch(name):
            raise PolicyError(f"{node.path}: {name!r} is not a subset name (a DNS-1123 label)")
        sub = _Node(value, f"{node.path}.{name}")
        if "labels" in sub.value:
            # The local mesh has no pod labels to select by, and the chart fills in the
            # service's selector labels; a subset that picked some pods would render
            # differently here and in the cluster.
            raise PolicyError(
                f"{sub.path}.labels: not supported; a subset selects every pod of the service "
                "and exists for its own trafficPolicy"
            )
        tp = sub.child("trafficPolicy")
        subsets[name] = Subset(
            name=name, traffic_policy=TrafficPolicy() if tp is None else _parse_traffic_policy(tp)
        )
        sub.done()
    return subsets


def _check_subsets_routed(
    routes: Sequence[Route], subsets: Mapping[str, Subset], path: str
) -> None:
    """Every route names a subset that exists (Istio answers a route to a missing subset with
    503 "no cluster"), and every subset is named by a route (a subset's policy applies only to
    traffic a route sends to it, so an unnamed one is a forgotten `subset:`)."""
    for i, r in enumerate(routes):
        if r.subset is not None and r.subset not in subsets:
            known = ", ".join(sorted(subsets)) or "none"
            raise PolicyError(
                f"{path}.routes[{i}].subset: no subset {r.subset!r} in {path}.subsets "
                f"(defined: {known})"
            )
    routed = {r.subset for r in routes}
    for name in subsets:
        if name not in routed:
            raise PolicyError(
                f"{path}.subsets.{name}: no route sends to it, so its trafficPolicy would apply "
                "to nothing (set `subset` on the route it is meant for)"
            )


def _parse_fault_node(node: _Node) -> Fault | None:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    d = node.child("delay")
    if d is not None:
        fixed = d.duration("fixedDelay")
        if fixed is None:
            raise PolicyError(f"{d.path}.fixedDelay: required (exponentialDelay is unsupported)")
        delay = FaultDelay(
            fixed_delay=fixed,
            percentage=d.percentage("percentage"),
            percent=d.int_("percent", 0, 100) or 0,
        )
        d.done()
    a = node.child("abort")
    if a is not None:
        http_status = a.int_("httpStatus", 200, 599)
        grpc_status = a.str_("grpcStatus")
        if (http_status is None) == (grpc_status is None):
            raise PolicyError(f"{a.path}: set exactly one of httpStatus and grpcStatus")
        if grpc_status is not None and grpc_status not in GRPC_STATUS_CODES:
            raise PolicyError(f"{a.path}.grpcStatus: unknown gRPC status {grpc_status!r}")
        abort = FaultAbort(
            http_status=http_status, grpc_status=grpc_status, percentage=a.percentage("percentage")
        )
        a.done()
    node.done()
    fault = Fault(delay=delay, abort=abort)
    return None if fault.empty else fault


def parse_fault(value: object, path: str = "fault") -> Fault | None:
    """Parse an Istio HTTPFaultInjection mapping, or its JSON/YAML text; `{}` gives None."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError as e:
            raise PolicyError(f"{path}: not JSON/YAML: {e}") from None
    return _parse_fault_node(_Node(value, path))


def _parse_destination(name: str, value: object, path: str) -> Destination:
    node = _Node(value, path)
    raw_routes = node.raw("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise PolicyError(f"{path}.routes: expected a non-empty list of routes")
    routes = tuple(_parse_route(r, f"{path}.routes[{i}]") for i, r in enumerate(raw_routes))
    names: set[str] = set()
    methods: set[str] = set()
    for i, r in enumerate(routes):
        if r.name in names:
            raise PolicyError(f"{path}.routes[{i}].name: {r.name!r} is used twice")
        names.add(r.name)
        if r.is_default and i != len(routes) - 1:
            raise PolicyError(
                f"{path}.routes[{i}]: a route without methods matches every call and must come last"
            )
        for m in r.methods:
            if m in methods:
                raise PolicyError(f"{path}.routes[{i}].methods: {m} is already routed above")
            methods.add(m)
    tp = node.child("trafficPolicy")
    subsets_node = node.child("subsets")
    subsets = {} if subsets_node is None else _parse_subsets(subsets_node)
    _check_subsets_routed(routes, subsets, path)
    fault_node = node.child("fault")
    dest = Destination(
        name=name,
        routes=routes,
        traffic_policy=TrafficPolicy() if tp is None else _parse_traffic_policy(tp),
        fault=None if fault_node is None else _parse_fault_node(fault_node),
        subsets=subsets,
    )
    node.done()
    return dest


def parse_policy(mesh: object, path: str = "mesh") -> MeshPolicy:
    """Validate the `mesh:` mapping. Keys of `mesh` other than `destinations` are chart
    settings and are ignored here."""
    node = _Node(mesh, path)
    dests_node = node.child("destinations")
    if dests_node is None or not dests_node.value:
        raise PolicyError(f"{path}.destinations: required, one entry per called service")
    dests: dict[str, Destination] = {}
    for name, value in dests_node.value.items():
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise PolicyError(f"{dests_node.path}: {name!r} is not a service name")
        dests[name] = _parse_destination(name, value, f"{dests_node.path}.{name}")
    return MeshPolicy(destinations=dests)


def load_policy(values_path: str | Path) -> MeshPolicy:
    """Load the `mesh:` section of a Helm values file (e.g. helm/phoneseller/values.yaml)."""
    path = Path(values_path)
    with path.open(encoding="utf-8") as f:
        try:
            values = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise PolicyError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, Mapping) or "mesh" not in values:
        raise PolicyError(f"{path}: no top-level `mesh:` section")
    return parse_policy(values["mesh"])


def fault_from_cli(spec: str) -> tuple[str, Fault | None]:
    """Parse `--fault SERVICE=JSON` (e.g. `promotion={"delay":{"fixedDelay":"1s"}}`)."""
    name, sep, body = spec.partition("=")
    if not sep or not name.strip():
        raise PolicyError(f"--fault {spec!r}: expected SERVICE=JSON, e.g. promotion='{{}}'")
    return name.strip(), parse_fault(body, f"--fault {name.strip()}")


def fault_to_values(fault: Fault | None) -> dict[str, object]:
    """The Istio-shaped mapping of a fault (inverse of `parse_fault`), e.g. for `--fault`."""
    out: dict[str, object] = {}
    if fault is None:
        return out
    if fault.delay is not None:
        d: dict[str, object] = {"fixedDelay": str(fault.delay.fixed_delay)}
        if fault.delay.percentage is not None:
            d["percentage"] = {"value": fault.delay.percentage}
        elif fault.delay.percent:
            d["percent"] = fault.delay.percent
        out["delay"] = d
    if fault.abort is not None:
        a: dict[str, object] = {}
        if fault.abort.http_status is not None:
            a["httpStatus"] = fault.abort.http_status
        if fault.abort.grpc_status is not None:
            a["grpcStatus"] = fault.abort.grpc_status
        if fault.abort.percentage is not None:
            a["percentage"] = {"value": fault.abort.percentage}
        out["abort"] = a
    return out


def fault_cli_arg(destination: str, fault: Fault | None) -> str:
    """The `--fault` argument that sets `fault` on `destination`."""
    return f"{destination}={json.dumps(fault_to_values(fault), separators=(',', ':'))}"
