"""Render the mesh policy and the local topology as an Envoy v3 bootstrap.

The numbers are rendered as Istio 1.30 renders them (the field-by-field mapping, with Istio's
defaults and subtleties, is the table in docs/mesh.md), so the local Envoy behaves like the
sidecars and the ingress gateway with the same values. A DestinationRule subset becomes a
cluster of its own, as in Istio, so a route to it meets that subset's circuit breaker only.
Two deliberate differences, both explained in docs/mesh.md:

- faults sit on the server-side (inbound) listener in front of each instance, not on the
  client-side route, so that an injected delay counts against the caller's route timeout and
  circuit breaker, as a slow destination would (`fault_placement="outbound"` renders Istio's
  placement, used by the test that demonstrates the difference);
- an active gRPC health check stands in for the Kubernetes readiness probe.

With `RenderOptions.mtls` the proxies speak mTLS to each other as Istio's do (mesh/security.py):
every cluster to an inbound listener presents its caller's certificate (the gateway's, or the
sidecar's caller's) and checks the destination's SPIFFE id; every inbound listener requires a
client certificate and authorizes each call with Envoy RBAC rendered from the chart's values.
Without it, everything between the proxies is plaintext.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml  # type: ignore[import-untyped,unused-ignore]

from mesh.edge import EndUserAuth, gateway_filters, local_reply_config
from mesh.policy import (
    Destination,
    Duration,
    Fault,
    MeshPolicy,
    OutlierDetection,
    Retries,
    Route,
    TrafficPolicy,
)
from mesh.security import GATEWAY, MeshTls, inbound_security, secure_cluster
from mesh.storefront import Storefront
from mesh.topology import INTERNAL_METHODS, Address, Instance, Topology

__all__ = [
    "ISTIO_DEFAULT_CONNECT_TIMEOUT",
    "MAX_UINT32",
    "RenderError",
    "RenderOptions",
    "Via",
    "cluster_name",
    "descriptor_services",
    "inbound_cluster_name",
    "render_envoy_config",
    "write_envoy_config",
]

log = logging.getLogger(__name__)

Json = dict[str, Any]

MAX_UINT32: Final = 4294967295
ISTIO_DEFAULT_CONNECT_TIMEOUT: Final = Duration.of_millis(10_000)  # meshConfig.connectTimeout
ISTIO_DEFAULT_RETRY_ON: Final = (
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
)
REFLECTION_PREFIXES: Final = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
HEALTH_CHECK_PATH: Final = "/grpc.health.v1.Health/Check"
# Where the gateway sends reflection and health checks (every service serves reflection of all
# phoneseller services; order is the front door).
GATEWAY_DEFAULT_SERVICE: Final = "order"

_T = "@type"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_TRANSCODER = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_PREV_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_HTTP_OPTS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT_FILTER: Final = "envoy.filters.http.fault"

# Gateway-style access log: enough to see which route/cluster/host served a call and why it failed.
_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] %DOWNSTREAM_LOCAL_ADDRESS% "%REQ(:METHOD)% %REQ(:PATH)%" %RESPONSE_CODE% '
    "grpc=%GRPC_STATUS_NUMBER% flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% "
    "route=%ROUTE_NAME% cluster=%UPSTREAM_CLUSTER% host=%UPSTREAM_HOST% "
    "dur=%DURATION%ms attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"
)


class RenderError(ValueError):
    """The policy and topology cannot be rendered together."""


@dataclass(frozen=True)
class RenderOptions:
    # Where the fault filter of a destination sits: "inbound" = on the server-side listener in
    # front of each instance (the destination is slow: delay counts against the caller's route
    # timeout and circuit breaker); "outbound" = on the client-side routes, as Istio renders it.
    fault_placement: Literal["inbound", "outbound"] = "inbound"
    # HTTP status of the gateway's refusal of internal RPCs; gRPC callers get the mapped gRPC
    # status (403 -> PERMISSION_DENIED).
    internal_rpc_status: int = 403
    # Append an access log of every listener to this file (None = no access log).
    access_log_path: str | None = None
    node_id: str = "phoneseller-local-mesh"
    # mTLS between the proxies and RBAC on the inbound listeners (None = plaintext, no RBAC).
    mtls: MeshTls | None = None
    # Who signs the end users' tokens (mesh/edge.py). None = no issuer's keys: the gateway
    # verifies no token and refuses every public RPC, as the chart without auth keys.
    end_users: EndUserAuth | None = None
    # The storefront page's static files, served by the gateway (mesh/storefront.py); None =
    # no page.
    storefront: Storefront | None = None


Via = Literal["outbound", "gateway"]


def cluster_name(service: str, via: Via = "outbound", subset: str | None = None) -> str:
    """Envoy cluster of calls to `service`: "outbound|<service>" from the client-side sidecars,
    "gateway|<service>" from the ingress gateway (separate circuit breakers, as separate proxies
    have in a cluster). A subset's is "<via>|<service>|<subset>", as Istio's
    "outbound|<port>|<subset>|<host>" next to the host's "outbound|<port>||<host>": a cluster,
    and so a circuit breaker, of its own."""
    return f"{via}|{service}" if subset is None else f"{via}|{service}|{subset}"


def inbound_cluster_name(instance: Instance) -> str:
    return f"inbound|{instance.service}|{instance.index}"


def _addr(a: Address) -> Json:
    return {"socket_address": {"address": a.host, "port_value": a.port}}


# --------------------------------------------------------------------------------------------
# Routes (VirtualService -> route)


def _percent(value: float) -> Json:
    # As Istio renders percentage.value: numerator = uint32(value * 10000) per MILLION.
    return {"numerator": int(value * 10000), "denominator": "MILLION"}


def fault_config(fault: Fault) -> Json:
    """A destination's fault as Istio renders it: an HTTPFault for a route's
    typed_per_filter_config (docs/mesh.md)."""
    out: Json = {_T: _FAULT}
    if fault.delay is not None:
        d = fault.delay
        pct = (
            _percent(d.percentage)
            if d.percentage is not None
            else {"numerator": d.percent, "denominator": "HUNDRED"}
        )
        out["delay"] = {"fixed_delay": d.fixed_delay.envoy(), "percentage": pct}
    if fault.abort is not None:
        a = fault.abort
        abort: Json = {}
        if a.percentage is not None:
            abort["percentage"] = _percent(a.percentage)
        if a.http_status is not None:
            abort["http_status"] = a.http_status
        else:
            abort["grpc_status"] = a.grpc_code
        out["abort"] = abort
    return out


def retry_policy(retries: Retries | None) -> Json | None:
    """A route's retries as Istio renders them (docs/mesh.md), for a destination without
    consistent-hash load balancing; None = no retry policy (attempts 0)."""
    prev_hosts = [
        {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {_T: _PREV_HOSTS}}
    ]
    out: Json = {
        "retry_on": ISTIO_DEFAULT_RETRY_ON,
        "num_retries": 2,
        "retry_host_predicate": prev_hosts,
        "host_selection_retry_max_attempts": 5,
        "retriable_status_codes": [503],
    }
    if retries is None:
        return out
    if retries.attempts <= 0:
        return None
    out["num_retries"] = retries.attempts
    if retries.retry_on:
        tokens: list[str] = []
        codes: list[int] = []
        for part in (p.strip() for p in retries.retry_on.split(",")):
            if not part:
                continue
            if part.isdigit() and 100 <= int(part) <= 599:
                codes.append(int(part))
            else:
                tokens.append(part)
        retry_on = ",".join(tokens)
        if codes and "retriable-status-codes" not in retry_on:
            retry_on += ",retriable-status-codes"
        out["retry_on"] = retry_on
        if codes:
            out["retriable_status_codes"] = codes
        else:
            del out["retriable_status_codes"]
    if retries.per_try_timeout is not None:
        out["per_try_timeout"] = retries.per_try_timeout.envoy()
    if retries.retry_ignore_previous_hosts is not None and not retries.retry_ignore_previous_hosts:
        del out["retry_host_predicate"]
    if retries.backoff is not None:
        out["retry_back_off"] = {"base_interval": retries.backoff.envoy()}
    return out


def _route_action(service: str, via: Via, route: Route) -> Json:
    # As Istio: timeout (default 0 = off) and the deprecated max_grpc_timeout = timeout,
    # so a caller's grpc-timeout header can shorten but never lengthen the route timeout.
    timeout = route.timeout.envoy() if route.timeout is not None else "0s"
    action: Json = {
        "cluster": cluster_name(service, via, route.subset),
        "timeout": timeout,
        "max_grpc_timeout": timeout,
    }
    rp = retry_policy(route.retries)
    if rp is not None:
        action["retry_policy"] = rp
    return action


def _served_routes(
    dest: Destination,
    service_full_name: str,
    via: Via,
    public: Sequence[str] = (),
) -> list[tuple[Route, Json]]:
    """The routes of `dest` a listener serves, each with its match, in order.

    A sidecar serves the destination's routes as the values write them. The gateway is an
    allow-list: one exact route per public method (`public`), with the policy of the route that
    serves that method; every other method falls through to the gateway's refusal, and the
    clusters only internal methods would use are left out.
    """
    if via == "gateway":
        out: list[tuple[Route, Json]] = []
        for method in public:
            route = dest.route_for(method)
            if route is None:
                raise RenderError(f"mesh.destinations.{dest.name}: no route serves {method}")
            match = {"path": f"/{service_full_name}/{method}", "case_sensitive": True}
            out.append((route, match))
        return out
    out = []
    for r in dest.routes:
        if r.is_default:
            out.append((r, {"prefix": "/"}))
            continue
        for m in r.methods:
            out.append((r, {"path": f"/{service_full_name}/{m}", "case_sensitive": True}))
    return out


def _policy_routes(
    dest: Destination,
    service_full_name: str,
    via: Via,
    *,
    fault: Fault | None,
    public: Sequence[str] = (),
) -> list[Json]:
    out: list[Json] = []
    for r, match in _served_routes(dest, service_full_name, via, public):
        name = f"{dest.name}.{r.name}"
        if via == "gateway":
            name = f"{dest.name}.{match['path'].rpartition('/')[2]}"
        entry: Json = {
            "name": name,
            "match": match,
            "route": _route_action(dest.name, via, r),
        }
        if fault is not None:
            entry["typed_per_filter_config"] = {FAULT_FILTER: fault_config(fault)}
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------
# Clusters (DestinationRule -> cluster)


def _circuit_breakers(tp: TrafficPolicy) -> Json:
    # As Istio: every threshold starts at the maximum, then what the DestinationRule sets
    # (values > 0 only) replaces it.
    t: Json = {
        "max_connections": MAX_UINT32,
        "max_pending_requests": MAX_UINT32,
        "max_requests": MAX_UINT32,
        "max_retries": MAX_UINT32,
        "track_remaining": True,
    }
    pool = tp.connection_pool
    if pool is not None and pool.http is not None:
        if pool.http.http2_max_requests:
            t["max_requests"] = pool.http.http2_max_requests
        if pool.http.http1_max_pending_requests:
            t["max_pending_requests"] = pool.http.http1_max_pending_requests
        if pool.http.max_retries:
            t["max_retries"] = pool.http.max_retries
    if pool is not None and pool.tcp is not None and pool.tcp.max_connections:
        t["max_connections"] = pool.tcp.max_connections
    return {"thresholds": [t]}


def _http_protocol_options(tp: TrafficPolicy | None) -> Json:
    h2: Json = {}
    common: Json = {}
    pool = tp.connection_pool if tp is not None else None
    if pool is not None:
        idle = pool.http.idle_timeout if pool.http is not None else None
        if idle is None and pool.tcp is not None:
            idle = pool.tcp.idle_timeout
        if idle is not None:
            common["idle_timeout"] = idle.envoy()
        if pool.http is not None and pool.http.max_requests_per_connection:
            common["max_requests_per_connection"] = pool.http.max_requests_per_connection
        if pool.tcp is not None and pool.tcp.max_connection_duration is not None:
            common["max_connection_duration"] = pool.tcp.max_connection_duration.envoy()
        if pool.http is not None and pool.http.max_concurrent_streams:
            h2["max_concurrent_streams"] = pool.http.max_concurrent_streams
    out: Json = {_T: _HTTP_OPTS, "explicit_http_config": {"http2_protocol_options": h2}}
    if common:
        out["common_http_protocol_options"] = common
    return {_HTTP_OPTS_KEY: out}


def _outlier_detection(od: OutlierDetection, *, active_health_check: bool) -> Json:
    # As Istio: only what the DestinationRule sets, success-rate ejection off.
    out: Json = {"enforcing_success_rate": 0}
    if od.consecutive_5xx_errors is not None:
        out["consecutive_5xx"] = od.consecutive_5xx_errors
        out["enforcing_consecutive_5xx"] = 100 if od.consecutive_5xx_errors > 0 else 0
    if od.consecutive_gateway_errors is not None:
        out["consecutive_gateway_failure"] = od.consecutive_gateway_errors
        out["enforcing_consecutive_gateway_failure"] = (
            100 if od.consecutive_gateway_errors > 0 else 0
        )
    if od.interval is not None:
        out["interval"] = od.interval.envoy()
    if od.base_ejection_time is not None:
        out["base_ejection_time"] = od.base_ejection_time.envoy()
    if od.max_ejection_percent > 0:
        out["max_ejection_percent"] = od.max_ejection_percent
    if od.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
        if od.consecutive_local_origin_failures:
            out["consecutive_local_origin_failure"] = od.consecutive_local_origin_failures
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    if active_health_check:
        # Not Istio (which has no active checks): without this a passing health check would
        # undo an outlier ejection at once.
        out["successful_active_health_check_uneject_host"] = False
    return out


def _lb_policy(tp: TrafficPolicy) -> str:
    return {
        None: "LEAST_REQUEST",
        "LEAST_REQUEST": "LEAST_REQUEST",
        "LEAST_CONN": "LEAST_REQUEST",
        "ROUND_ROBIN": "ROUND_ROBIN",
        "RANDOM": "RANDOM",
    }[tp.load_balancer]


def _outbound_cluster(
    name: str, tp: TrafficPolicy, instances: Sequence[Instance], topo: Topology
) -> Json:
    """A client-side cluster of a destination (the host, or one of its subsets), with `tp`:
    the destination's traffic policy, or a subset's merged into it."""
    hc = topo.health_check
    connect = ISTIO_DEFAULT_CONNECT_TIMEOUT
    pool = tp.connection_pool
    if pool is not None and pool.tcp is not None and pool.tcp.connect_timeout is not None:
        connect = pool.tcp.connect_timeout
    endpoints = [
        {
            # Traffic goes through the inbound sidecar of the instance; the health check goes
            # straight to the instance, so an injected fault never fails the health check.
            "endpoint": {
                "address": _addr(inst.inbound),
                "hostname": inst.name,
                "health_check_config": {
                    "port_value": inst.address.port,
                    "address": _addr(inst.address),
                },
            }
        }
        for inst in instances
    ]
    ip_only = all(i.inbound.is_ip and i.address.is_ip for i in instances)
    cluster: Json = {
        "name": name,
        "type": "STATIC" if ip_only else "STRICT_DNS",
        "connect_timeout": connect.envoy(),
        "lb_policy": _lb_policy(tp),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        "circuit_breakers": _circuit_breakers(tp),
        "typed_extension_protocol_options": _http_protocol_options(tp),
        "common_lb_config": {},
        "health_checks": [
            {
                "timeout": hc.timeout.envoy(),
                "interval": hc.interval.envoy(),
                "no_traffic_interval": hc.no_traffic_interval.envoy(),
                "unhealthy_threshold": hc.unhealthy_threshold,
                "healthy_threshold": hc.healthy_threshold,
                "grpc_health_check": {"service_name": ""},
            }
        ],
    }
    if tp.outlier_detection is not None:
        cluster["outlier_detection"] = _outlier_detection(
            tp.outlier_detection, active_health_check=True
        )
        # Istio sets the panic threshold from minHealthPercent (default 0 = panic mode off).
        cluster["common_lb_config"]["healthy_panic_threshold"] = {
            "value": float(tp.outlier_detection.min_health_percent)
        }
    return cluster


def _inbound_cluster(inst: Instance) -> Json:
    # Istio inbound cluster: default (maximal) circuit breakers, mesh connect timeout, HTTP/2
    # for a gRPC port, no outlier detection.
    name = inbound_cluster_name(inst)
    return {
        "name": name,
        "type": "STATIC" if inst.address.is_ip else "STRICT_DNS",
        "connect_timeout": ISTIO_DEFAULT_CONNECT_TIMEOUT.envoy(),
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(inst.address)}}]}],
        },
        "circuit_breakers": _circuit_breakers(TrafficPolicy()),
        "typed_extension_protocol_options": _http_protocol_options(None),
    }


# --------------------------------------------------------------------------------------------
# Listeners


def _access_log(opts: RenderOptions) -> list[Json]:
    if opts.access_log_path is None:
        return []
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                _T: _FILE_LOG,
                "path": opts.access_log_path,
                "log_format": {"text_format_source": {"inline_string": _ACCESS_LOG_FORMAT}},
            },
        }
    ]


def _hcm_listener(
    name: str,
    address: Address,
    stat_prefix: str,
    routes: list[Json],
    http_filters: list[Json],
    opts: RenderOptions,
    local_replies: Json | None = None,
    max_direct_response_body_size_bytes: int | None = None,
) -> Json:
    hcm: Json = {
        _T: _HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {_T: _ROUTER}},
        ],
    }
    log_cfg = _access_log(opts)
    if log_cfg:
        hcm["access_log"] = log_cfg
    if max_direct_response_body_size_bytes is not None:
        limit = max_direct_response_body_size_bytes
        hcm["route_config"]["max_direct_response_body_size_bytes"] = limit
    if local_replies is not None:
        hcm["local_reply_config"] = local_replies
    return {
        "name": name,
        "address": _addr(address),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _fault_filter() -> Json:
    # As Istio: the filter is present with an empty config; each route carries its fault.
    return {"name": FAULT_FILTER, "typed_config": {_T: _FAULT}}


def descriptor_services(descriptor_set_path: str | Path) -> set[str]:
    """Fully qualified names of the services in a FileDescriptorSet file."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(Path(descriptor_set_path).read_bytes())
    out: set[str] = set()
    for f in fds.file:
        for s in f.service:
            out.add(f"{f.package}.{s.name}" if f.package else s.name)
    return out


def _transcoder(descriptor_set_path: Path, services: Sequence[str]) -> Json:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            _T: _TRANSCODER,
            "proto_descriptor": str(descriptor_set_path),
            "services": list(services),
            "convert_grpc_status": True,
            "print_options": {
                "add_whitespace": True,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": True,
            },
        },
    }


def _fault_for(dest: Destination | None, placement: str, here: str) -> Fault | None:
    if dest is None or dest.fault is None or placement != here:
        return None
    return dest.fault


def _gateway_listener(
    policy: MeshPolicy,
    topo: Topology,
    descriptor_set_path: Path | None,
    opts: RenderOptions,
) -> Json:
    routes: list[Json] = []
    for path in INTERNAL_METHODS:
        routes.append(
            {
                "name": "internal." + path.strip("/").replace("/", "."),
                "match": {"path": path},
                "direct_response": {
                    "status": opts.internal_rpc_status,
                    "body": {"inline_string": f"{path} is internal to the mesh"},
                },
            }
        )
    default_service = GATEWAY_DEFAULT_SERVICE
    if default_service in policy.destinations and default_service in topo.grpc_services:
        default_dest = policy[default_service]
        gw_cluster = cluster_name(default_service, "gateway")
        for prefix in REFLECTION_PREFIXES:
            # Streaming and no policy in the values: no timeout, no retries.
            routes.append(
                {
                    "name": "reflection." + prefix.strip("/"),
                    "match": {"prefix": prefix},
                    "route": {"cluster": gw_cluster, "timeout": "0s"},
                }
            )
        default_route = next((r for r in default_dest.routes if r.is_default), Route("default"))
        health = _route_action(default_service, "gateway", default_route)
        entry: Json = {
            "name": "health.check",
            "match": {"path": HEALTH_CHECK_PATH},
            "route": health,
        }
        fault = _fault_for(default_dest, opts.fault_placement, "outbound")
        if fault is not None:
            entry["typed_per_filter_config"] = {FAULT_FILTER: fault_config(fault)}
        routes.append(entry)
    public: list[str] = []
    for name in sorted(policy.destinations):
        full = topo.grpc_services.get(name)
        if full is None:
            raise RenderError(f"no gRPC service is known for destination {name!r}")
        methods = topo.public_methods.get(name, ())
        if methods:
            public.append(full)
        dest = policy[name]
        routes += _policy_routes(
            dest,
            full,
            "gateway",
            fault=_fault_for(dest, opts.fault_placement, "outbound"),
            public=methods,
        )
    # Everything else is closed. A method of one of our services that is not public (an
    # internal one, or one added to a contract and not to the values' publicMethods) is refused
    # (HTTP 403: PERMISSION_DENIED); any other gRPC method does not exist here (404:
    # UNIMPLEMENTED), nor does any other HTTP path.
    grpc_only = [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}]
    for name in sorted(topo.grpc_services):
        full = topo.grpc_services[name]
        routes.append(
            {
                "name": f"closed.{name}",
                "match": {"prefix": f"/{full}/", "headers": grpc_only},
                "direct_response": {
                    "status": opts.internal_rpc_status,
                    "body": {"inline_string": "the gateway does not expose this method"},
                },
            }
        )
    if opts.storefront is not None:
        # The page's files, before the catch-all below closes every other path.
        routes += opts.storefront.routes()
    routes.append(
        {
            "name": "closed",
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": "no such method or route"},
            },
        }
    )
    transcoder = None
    if descriptor_set_path is not None:
        known = descriptor_services(descriptor_set_path)
        services = [s for s in public if s in known]
        missing = sorted(set(public) - known)
        if missing:
            log.warning("no HTTP/JSON transcoding for %s: not in %s", missing, descriptor_set_path)
        if services:
            transcoder = _transcoder(descriptor_set_path, services)
    # Who may call (mesh/edge.py): claims stripped, transcoded, token verified, roles checked.
    public_paths = [
        f"/{topo.grpc_services[name]}/{method}"
        for name, methods in topo.public_methods.items()
        if name in policy.destinations
        for method in methods
    ]
    try:
        filters = gateway_filters(opts.end_users, transcoder, public_paths)
    except ValueError as e:
        raise RenderError(str(e)) from None
    if opts.fault_placement == "outbound":
        filters.append(_fault_filter())
    return _hcm_listener(
        "gateway",
        topo.gateway,
        "gateway",
        routes,
        filters,
        opts,
        local_reply_config(),
        opts.storefront.max_body_bytes() if opts.storefront is not None else None,
    )


def _sidecar_listener(
    name: str, address: Address, dest: Destination, full: str, opts: RenderOptions
) -> Json:
    fault = _fault_for(dest, opts.fault_placement, "outbound")
    routes = _policy_routes(dest, full, "outbound", fault=fault)
    filters = [_fault_filter()] if opts.fault_placement == "outbound" else []
    return _hcm_listener(f"outbound|{name}", address, f"outbound_{name}", routes, filters, opts)


def _inbound_listener(inst: Instance, dest: Destination | None, opts: RenderOptions) -> Json:
    fault = _fault_for(dest, opts.fault_placement, "inbound")
    route: Json = {
        "name": "default",
        "match": {"prefix": "/"},
        # As Istio's default inbound route: no timeout on the server side.
        "route": {
            "cluster": inbound_cluster_name(inst),
            "timeout": "0s",
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        },
    }
    if fault is not None:
        route["typed_per_filter_config"] = {FAULT_FILTER: fault_config(fault)}
    filters = [_fault_filter()] if opts.fault_placement == "inbound" else []
    security = None
    if opts.mtls is not None:
        try:
            security = inbound_security(opts.mtls, inst.service)
        except ValueError as e:
            raise RenderError(str(e)) from None
        # Authorization first: a refused call is refused at once, never delayed by a fault.
        filters.insert(0, security.rbac)
    listener = _hcm_listener(
        f"inbound|{inst.service}|{inst.index}",
        inst.inbound,
        f"inbound_{inst.service}_{inst.index}",
        [route],
        filters,
        opts,
        security.local_replies if security is not None else None,
    )
    if security is not None:
        (chain,) = listener["filter_chains"]
        chain["transport_socket"] = security.transport_socket
        # As Istio's inbound sidecar: the service learns its caller's identity from
        # x-forwarded-client-cert, and a caller cannot forge that header.
        hcm = chain["filters"][0]["typed_config"]
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
    return listener


def _secured(cluster: Json, service: str, via: Via, opts: RenderOptions) -> Json:
    """A gateway or outbound cluster to `service` with the caller's certificate when mTLS is
    on: the gateway's identity, or the one caller of the service's sidecar listener."""
    if opts.mtls is None:
        return cluster
    client = GATEWAY if via == "gateway" else opts.mtls.caller_of.get(service)
    if client is None:
        raise RenderError(
            f"a sidecar listener for {service!r}, but no service calls it: whose identity "
            "would it present?"
        )
    try:
        return secure_cluster(cluster, opts.mtls, client, service)
    except ValueError as e:
        raise RenderError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Bootstrap


def render_envoy_config(
    policy: MeshPolicy,
    topology: Topology,
    descriptor_set_path: str | Path | None,
    *,
    options: RenderOptions | None = None,
) -> dict[str, Any]:
    """The Envoy v3 bootstrap (as a JSON-able dict) for `policy` on `topology`.

    `descriptor_set_path`: a FileDescriptorSet (built with --include_imports
    --include_source_info) enabling HTTP/JSON transcoding at the gateway for the services it
    contains; None = gRPC only. A given path must exist.
    """
    opts = options or RenderOptions()
    desc: Path | None = None
    if descriptor_set_path is not None:
        desc = Path(descriptor_set_path).resolve()
        if not desc.is_file():
            raise RenderError(f"descriptor set {desc} does not exist")
    for name in topology.instances:
        if name not in policy.destinations:
            raise RenderError(f"instances of {name!r} are given but the policy has no {name!r}")
    for name in topology.sidecars:
        if name not in policy.destinations:
            raise RenderError(f"a sidecar listener for {name!r} but the policy has no {name!r}")

    listeners: list[Json] = [_gateway_listener(policy, topology, desc, opts)]
    for name in sorted(topology.sidecars):
        full = topology.grpc_services.get(name)
        if full is None:
            raise RenderError(f"no gRPC service is known for {name!r}")
        listeners.append(_sidecar_listener(name, topology.sidecars[name], policy[name], full, opts))
    clusters: list[Json] = []
    for name in sorted(policy.destinations):
        dest = policy[name]
        insts = topology.instances.get(name, ())
        vias: tuple[Via, ...] = (
            ("gateway", "outbound") if name in topology.sidecars else ("gateway",)
        )
        for via in vias:
            # The host's cluster always (reflection and health checks use it too), then one
            # per subset that a route served on this side sends to, in the values' order.
            host = _outbound_cluster(cluster_name(name, via), dest.traffic_policy, insts, topology)
            clusters.append(_secured(host, name, via, opts))
            served = _served_routes(
                dest, topology.grpc_services[name], via, topology.public_methods.get(name, ())
            )
            routed = {r.subset for r, _ in served}
            for subset in dest.subsets:
                if subset in routed:
                    own = _outbound_cluster(
                        cluster_name(name, via, subset),
                        dest.traffic_policy_for(subset),
                        insts,
                        topology,
                    )
                    clusters.append(_secured(own, name, via, opts))
    for inst in topology.all_instances():
        listeners.append(_inbound_listener(inst, policy.destinations.get(inst.service), opts))
        clusters.append(_inbound_cluster(inst))

    return {
        "node": {"id": opts.node_id, "cluster": "phoneseller"},
        "admin": {"address": _addr(topology.admin)},
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_envoy_config(config: Mapping[str, Any], out: str | Path) -> Path:
    """Write the bootstrap as YAML (Envoy picks the format from the .yaml/.json suffix)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "# Rendered by `python -m mesh render` from the chart's mesh values. Do not edit.\n"
        + yaml.safe_dump(dict(config), sort_keys=False, width=100),
        encoding="utf-8",
    )
    tmp.replace(path)
    return path
