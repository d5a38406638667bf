"""mesh.envoy: the rendered bootstrap is valid for the real Envoy and carries the values' numbers.

Parity is checked field by field against the raw YAML values (read without mesh.policy), with
Istio's defaults where the values set nothing and Istio's merge of a subset's traffic policy
(the mapping table in docs/mesh.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from mesh.envoy import (
    MAX_UINT32,
    RenderError,
    RenderOptions,
    cluster_name,
    descriptor_services,
    render_envoy_config,
    write_envoy_config,
)
from mesh.policy import MeshPolicy, parse_fault, parse_policy
from mesh.process import validate_config
from mesh.topology import (
    GRPC_SERVICES,
    INTERNAL_METHODS,
    Address,
    Topology,
    TopologyError,
    build_topology,
    default_topology,
)

ROOT = Path(__file__).resolve().parents[2]

# A topology with replicas, so endpoint rendering is checked with more than one host.
REPLICAS = {
    "order": ["127.0.0.1:50051"],
    "payment": ["127.0.0.1:50052", "127.0.0.1:50062"],
    "promotion": ["127.0.0.1:50053", "127.0.0.1:50063"],
    "store": ["127.0.0.1:50054"],
    "customer": ["127.0.0.1:50055"],
}
DELAY = {"delay": {"fixedDelay": "1s", "percentage": {"value": 100}}}
ABORT = {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}}


# -- independent readers of the raw values and the rendered config ---------------------------


def ms(text: str) -> int:
    """'610ms' / '1s' / '10s' -> milliseconds (only the notations the values use)."""
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert m, f"unexpected duration notation in values: {text!r}"
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000}[m.group(2)]


def envoy_ms(text: str) -> int:
    assert text.endswith("s"), text
    return round(float(text[:-1]) * 1000)


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    for lst in config["static_resources"]["listeners"]:
        if lst["name"] == name:
            return dict(lst)
    raise AssertionError(f"no listener {name}")


def hcm(lst: dict[str, Any]) -> dict[str, Any]:
    return dict(lst["filter_chains"][0]["filters"][0]["typed_config"])


def routes(config: dict[str, Any], listener_name: str) -> list[dict[str, Any]]:
    return list(hcm(listener(config, listener_name))["route_config"]["virtual_hosts"][0]["routes"])


def http_filter_names(config: dict[str, Any], listener_name: str) -> list[str]:
    return [f["name"] for f in hcm(listener(config, listener_name))["http_filters"]]


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    for c in config["static_resources"]["clusters"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no cluster {name}")


def route_for_path(rs: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The first route Envoy would pick for a gRPC path (path or prefix match)."""
    for r in rs:
        m = r["match"]
        if m.get("path") == path or ("prefix" in m and path.startswith(m["prefix"])):
            return r
    raise AssertionError(f"no route for {path}")


@pytest.fixture(scope="module")
def topo() -> Topology:
    return build_topology(REPLICAS)


@pytest.fixture(scope="module")
def config(policy: MeshPolicy, topo: Topology) -> dict[str, Any]:
    return render_envoy_config(policy, topo, None)


# -- Envoy accepts it -----------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["inbound", "outbound"])
def test_rendered_config_passes_envoy_validate(
    policy: MeshPolicy,
    topo: Topology,
    tmp_path: Path,
    envoy_available: Path,
    descriptor_set: Path,
    placement: str,
) -> None:
    faulty = policy.with_fault("promotion", parse_fault({**DELAY, **ABORT}))
    config = render_envoy_config(
        faulty,
        topo,
        descriptor_set,
        options=RenderOptions(fault_placement=placement, access_log_path=str(tmp_path / "a.log")),  # type: ignore[arg-type]
    )
    path = write_envoy_config(config, tmp_path / "envoy.yaml")
    validate_config(path)


def test_default_topology_without_transcoding_passes_validate(
    policy: MeshPolicy, tmp_path: Path, envoy_available: Path
) -> None:
    path = write_envoy_config(
        render_envoy_config(policy, default_topology(), None), tmp_path / "envoy.yaml"
    )
    validate_config(path)


def test_an_invalid_config_is_reported(tmp_path: Path, envoy_available: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"static_resources": {"clusters": [{"name": "x", "type": "NOPE"}]}})
    )
    with pytest.raises(RuntimeError, match="validate failed"):
        validate_config(bad)


# -- DestinationRule -> cluster parity ------------------------------------------------------

# The TrafficPolicy fields a subset's trafficPolicy replaces whole (docs/mesh.md, subsets).
SUBSET_MERGED_FIELDS = ("connectionPool", "outlierDetection", "loadBalancer")


def merged_traffic_policy(raw: dict[str, Any], subset: str | None) -> dict[str, Any]:
    """The raw trafficPolicy of the host, or of a subset merged as Istio merges it: each field
    the subset sets replaces the host's whole; the others are inherited."""
    tp = dict(raw.get("trafficPolicy") or {})
    if subset is None:
        return tp
    sub = (raw["subsets"][subset] or {}).get("trafficPolicy") or {}
    tp.update({k: v for k, v in sub.items() if k in SUBSET_MERGED_FIELDS})
    return tp


def expected_clusters(
    raw: dict[str, Any], service: str, topo: Topology
) -> list[tuple[str, dict[str, Any]]]:
    """(cluster name, raw traffic policy) of every client-side cluster of a destination: the
    host's on each side, and each subset's on each side where a served route sends to it (the
    gateway serves no internal method)."""
    full = GRPC_SERVICES[service]
    out: list[tuple[str, dict[str, Any]]] = []
    for via in ["gateway"] + (["outbound"] if service in topo.sidecars else []):
        out.append((f"{via}|{service}", merged_traffic_policy(raw, None)))
        served = {
            route["subset"]
            for route in raw["routes"]
            if "subset" in route
            and (
                via == "outbound"
                or "methods" not in route
                or any(f"/{full}/{m}" not in INTERNAL_METHODS for m in route["methods"])
            )
        }
        for subset in raw.get("subsets") or {}:
            if subset in served:
                out.append((f"{via}|{service}|{subset}", merged_traffic_policy(raw, subset)))
    return out


def test_every_subset_of_the_values_has_a_sidecar_cluster(
    raw_mesh: dict[str, Any], config: dict[str, Any], topo: Topology
) -> None:
    names = {c["name"] for c in config["static_resources"]["clusters"]}
    subsets = [
        (service, subset)
        for service, raw in raw_mesh["destinations"].items()
        for subset in raw.get("subsets") or {}
    ]
    assert ("promotion", "clawback") in subsets
    for service, subset in subsets:
        assert f"outbound|{service}|{subset}" in names
        # The gateway routes no internal method, so it has no cluster for the clawback.
        assert f"gateway|{service}|{subset}" not in names
    rendered = {n for n in names if not n.startswith("inbound|")}
    assert rendered == {
        name
        for service, raw in raw_mesh["destinations"].items()
        for name, _ in expected_clusters(raw, service, topo)
    }


@pytest.mark.parametrize("service", sorted(GRPC_SERVICES))
def test_cluster_numbers_equal_the_values(
    raw_mesh: dict[str, Any], config: dict[str, Any], topo: Topology, service: str
) -> None:
    raw = raw_mesh["destinations"][service]
    for name, tp in expected_clusters(raw, service, topo):
        _check_cluster(cluster(config, name), tp, topo, service)


def _check_cluster(c: dict[str, Any], tp: dict[str, Any], topo: Topology, service: str) -> None:
    tcp = (tp.get("connectionPool") or {}).get("tcp") or {}
    http = (tp.get("connectionPool") or {}).get("http") or {}
    od = tp.get("outlierDetection")
    # connectionPool.tcp.connectTimeout, mesh default 10s.
    assert envoy_ms(c["connect_timeout"]) == ms(tcp.get("connectTimeout", "10s"))
    # Istio starts every threshold at 4294967295 with track_remaining, then applies the DR.
    (t,) = c["circuit_breakers"]["thresholds"]
    assert t["max_connections"] == tcp.get("maxConnections", MAX_UINT32)
    assert t["max_pending_requests"] == http.get("http1MaxPendingRequests", MAX_UINT32)
    assert t["max_requests"] == http.get("http2MaxRequests", MAX_UINT32)
    assert t["max_retries"] == (http.get("maxRetries") or MAX_UINT32)
    assert t["track_remaining"] is True
    assert set(t) == {
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
        "track_remaining",
    }
    assert c["lb_policy"] == "LEAST_REQUEST"
    opts = c["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert opts["explicit_http_config"] == {"http2_protocol_options": {}}
    if "maxRequestsPerConnection" in http:
        assert (
            opts["common_http_protocol_options"]["max_requests_per_connection"]
            == http["maxRequestsPerConnection"]
        )
    else:
        assert "common_http_protocol_options" not in opts
    # outlierDetection: only what the values set; success-rate ejection off.
    assert od is not None, "every destination of the chart sets outlier detection"
    o = c["outlier_detection"]
    assert o["enforcing_success_rate"] == 0
    for key, ekey, raw_key in (
        ("consecutive_5xx", "enforcing_consecutive_5xx", "consecutive5xxErrors"),
        (
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "consecutiveGatewayErrors",
        ),
    ):
        if raw_key in od:
            assert o[key] == od[raw_key]
            assert o[ekey] == (100 if od[raw_key] > 0 else 0)
        else:
            assert key not in o
            assert ekey not in o
    assert envoy_ms(o["interval"]) == ms(od["interval"])
    assert envoy_ms(o["base_ejection_time"]) == ms(od["baseEjectionTime"])
    assert o["max_ejection_percent"] == od["maxEjectionPercent"]
    # The local active health check must not undo an ejection.
    assert o["successful_active_health_check_uneject_host"] is False
    assert c["common_lb_config"]["healthy_panic_threshold"] == {
        "value": float(od.get("minHealthPercent", 0))
    }
    # Endpoints: every instance, reached through its inbound sidecar, health-checked direct.
    eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(eps) == len(topo.instances[service])
    for ep, inst in zip(eps, topo.instances[service], strict=True):
        e = ep["endpoint"]
        assert e["address"]["socket_address"] == {
            "address": inst.inbound.host,
            "port_value": inst.inbound.port,
        }
        assert e["health_check_config"]["port_value"] == inst.address.port
    (hc,) = c["health_checks"]
    assert hc["grpc_health_check"] == {"service_name": ""}
    assert envoy_ms(hc["no_traffic_interval"]) <= 1000
    assert envoy_ms(hc["interval"]) <= 1000


def test_a_subset_gets_a_cluster_of_its_own_merged_as_istio_merges(topo: Topology) -> None:
    """A subset's trafficPolicy replaces each field it sets whole and inherits the others: here
    its connectionPool (http only) drops the host's tcp settings, while outlier detection and
    the load balancer come from the host. Only the route naming the subset goes there."""
    policy = parse_policy(
        {
            "destinations": {
                "promotion": {
                    "routes": [
                        {"name": "claw", "methods": ["ClawBackPoints"], "subset": "tight"},
                        {"name": "read", "methods": ["GetPointBalance"], "subset": "tight"},
                        {"name": "default"},
                    ],
                    "trafficPolicy": {
                        "connectionPool": {
                            "tcp": {"maxConnections": 100, "connectTimeout": "1s"},
                            "http": {"http2MaxRequests": 100},
                        },
                        "outlierDetection": {"consecutive5xxErrors": 7, "interval": "2s"},
                        "loadBalancer": {"simple": "ROUND_ROBIN"},
                    },
                    "subsets": {
                        "tight": {
                            "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 3}}}
                        }
                    },
                }
            }
        }
    )
    topo = build_topology({"promotion": ["127.0.0.1:50053"]}, sidecar_ports={"promotion": 15053})
    config = render_envoy_config(policy, topo, None)
    for via in ("outbound", "gateway"):
        host = cluster(config, f"{via}|promotion")
        (t,) = host["circuit_breakers"]["thresholds"]
        assert (t["max_connections"], t["max_requests"]) == (100, 100)
        tight = cluster(config, f"{via}|promotion|tight")
        (t,) = tight["circuit_breakers"]["thresholds"]
        assert t["max_requests"] == 3
        assert t["max_connections"] == MAX_UINT32  # the host's tcp is not inherited
        assert tight["connect_timeout"] == "10s"  # neither is its connectTimeout
        assert tight["outlier_detection"] == host["outlier_detection"]
        assert tight["outlier_detection"]["consecutive_5xx"] == 7
        assert tight["lb_policy"] == host["lb_policy"] == "ROUND_ROBIN"
        assert tight["load_assignment"]["endpoints"] == host["load_assignment"]["endpoints"]
        assert tight["load_assignment"]["cluster_name"] == f"{via}|promotion|tight"
    sidecar = routes(config, "outbound|promotion")
    gateway = routes(config, "gateway")
    for rs, via in ((sidecar, "outbound"), (gateway, "gateway")):
        read = route_for_path(rs, "/phoneseller.promotion.v1.PromotionService/GetPointBalance")
        assert read["route"]["cluster"] == f"{via}|promotion|tight"
    other = "/phoneseller.promotion.v1.PromotionService/Other"
    assert route_for_path(sidecar, other)["route"]["cluster"] == "outbound|promotion"
    assert "direct_response" in route_for_path(gateway, other), "not public: closed"
    claw = "/phoneseller.promotion.v1.PromotionService/ClawBackPoints"
    assert route_for_path(sidecar, claw)["route"]["cluster"] == "outbound|promotion|tight"
    assert "direct_response" in route_for_path(gateway, claw)


def test_the_gateway_has_no_cluster_for_a_subset_only_internal_methods_use(
    policy: MeshPolicy, topo: Topology
) -> None:
    """The chart's clawback subset: payment's sidecar gets the clawback's cluster, the gateway
    (which refuses ClawBackPoints) does not, and customers' GetPointBalance goes to the host's
    cluster with its own, ample, circuit breaker."""
    config = render_envoy_config(policy, topo, None)
    names = {c["name"] for c in config["static_resources"]["clusters"]}
    claw_route = policy["promotion"].route_for("ClawBackPoints")
    assert claw_route is not None
    assert claw_route.subset is not None
    assert cluster_name("promotion", "outbound", claw_route.subset) in names
    assert cluster_name("promotion", "gateway", claw_route.subset) not in names
    balance = "/phoneseller.promotion.v1.PromotionService/GetPointBalance"
    read = route_for_path(routes(config, "gateway"), balance)
    assert read["route"]["cluster"] == "gateway|promotion"
    reads = cluster(config, "gateway|promotion")["circuit_breakers"]["thresholds"][0]
    claws = cluster(config, cluster_name("promotion", "outbound", claw_route.subset))[
        "circuit_breakers"
    ]["thresholds"][0]
    assert (claws["max_requests"], claws["max_pending_requests"]) == (32, 8)
    assert reads["max_requests"] > 40 and reads["max_pending_requests"] > 40


def test_no_outlier_detection_renders_none_and_keeps_envoys_panic_default(topo: Topology) -> None:
    policy = parse_policy(
        {"destinations": {"order": {"routes": [{"name": "default"}], "trafficPolicy": {}}}}
    )
    config = render_envoy_config(
        policy, build_topology({"order": ["127.0.0.1:50051"]}, sidecar_ports={}), None
    )
    c = cluster(config, "gateway|order")
    assert "outlier_detection" not in c
    assert c["common_lb_config"] == {}
    (t,) = c["circuit_breakers"]["thresholds"]
    assert t["max_requests"] == t["max_pending_requests"] == t["max_connections"] == MAX_UINT32
    assert t["max_retries"] == MAX_UINT32
    assert c["connect_timeout"] == "10s"


def test_inbound_clusters_have_istios_inbound_defaults(
    config: dict[str, Any], topo: Topology
) -> None:
    for inst in topo.all_instances():
        c = cluster(config, f"inbound|{inst.service}|{inst.index}")
        assert c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ] == {"address": inst.address.host, "port_value": inst.address.port}
        assert "outlier_detection" not in c
        assert "health_checks" not in c
        (t,) = c["circuit_breakers"]["thresholds"]
        assert t["max_requests"] == MAX_UINT32
        (r,) = routes(config, f"inbound|{inst.service}|{inst.index}")
        assert r["route"]["timeout"] == "0s"
        assert r["route"]["max_stream_duration"] == {
            "max_stream_duration": "0s",
            "grpc_timeout_header_max": "0s",
        }


# -- VirtualService -> route parity ---------------------------------------------------------


def _check_route(r: dict[str, Any], raw_route: dict[str, Any]) -> None:
    action = r["route"]
    timeout = ms(raw_route["timeout"]) if "timeout" in raw_route else 0
    assert envoy_ms(action["timeout"]) == timeout
    assert envoy_ms(action["max_grpc_timeout"]) == timeout
    retries = raw_route.get("retries")
    if retries is not None and retries["attempts"] == 0:
        assert "retry_policy" not in action
        return
    rp = action["retry_policy"]
    assert rp["host_selection_retry_max_attempts"] == 5
    assert rp["retry_host_predicate"] == [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate"
            },
        }
    ]
    if retries is None:  # Istio's default policy
        assert rp["num_retries"] == 2
        assert (
            rp["retry_on"]
            == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        )
        assert rp["retriable_status_codes"] == [503]
        assert "per_try_timeout" not in rp
        return
    assert rp["num_retries"] == retries["attempts"]
    if "perTryTimeout" in retries:
        assert envoy_ms(rp["per_try_timeout"]) == ms(retries["perTryTimeout"])
    else:
        assert "per_try_timeout" not in rp
    if "retryOn" in retries:
        assert rp["retry_on"].split(",") == [t.strip() for t in retries["retryOn"].split(",")]
        assert "retriable_status_codes" not in rp


@pytest.mark.parametrize("service", sorted(GRPC_SERVICES))
def test_route_numbers_equal_the_values(
    raw_mesh: dict[str, Any], config: dict[str, Any], topo: Topology, service: str
) -> None:
    full = GRPC_SERVICES[service]
    raw_routes = raw_mesh["destinations"][service]["routes"]

    def raw_route_for(method: str) -> dict[str, Any]:
        named = [r for r in raw_routes if method in r.get("methods", [])]
        found: dict[str, Any] = (named or [r for r in raw_routes if "methods" not in r])[0]
        return found

    # The gateway: one exact route per public method, with the policy of the route serving it.
    gateway = routes(config, "gateway")
    for method in topo.public_methods[service]:
        raw_route = raw_route_for(method)
        path = f"/{full}/{method}"
        r = route_for_path(gateway, path)
        assert r["match"] == {"path": path, "case_sensitive": True}
        assert r["name"] == f"{service}.{method}"
        assert r["route"]["cluster"] == cluster_name(service, "gateway", raw_route.get("subset"))
        _check_route(r, raw_route)
    # A sidecar: the values' routes as written.
    if service not in topo.sidecars:
        return
    sidecar = routes(config, f"outbound|{service}")
    for raw_route in raw_routes:
        expected_cluster = cluster_name(service, "outbound", raw_route.get("subset"))
        if "methods" in raw_route:
            for method in raw_route["methods"]:
                path = f"/{full}/{method}"
                r = route_for_path(sidecar, path)
                assert r["match"] == {"path": path, "case_sensitive": True}
                assert r["name"] == f"{service}.{raw_route['name']}"
                assert r["route"]["cluster"] == expected_cluster
                _check_route(r, raw_route)
        else:
            (r,) = [x for x in sidecar if x["match"] == {"prefix": "/"}]
            assert r["name"] == f"{service}.{raw_route['name']}"
            assert r["route"]["cluster"] == expected_cluster
            _check_route(r, raw_route)


def test_default_retry_policy_when_retries_are_unset() -> None:
    policy = parse_policy(
        {
            "destinations": {
                "payment": {
                    "routes": [
                        {
                            "name": "codes",
                            "methods": ["Pay"],
                            "retries": {"attempts": 3, "retryOn": "503,unavailable"},
                        },
                        {"name": "default"},
                    ]
                }
            }
        }
    )
    topo = build_topology({"payment": ["127.0.0.1:50052"]}, sidecar_ports={"payment": 15052})
    rs = routes(render_envoy_config(policy, topo, None), "outbound|payment")
    codes = route_for_path(rs, "/phoneseller.payment.v1.PaymentService/Pay")["route"][
        "retry_policy"
    ]
    # As Istio: numbers become retriable_status_codes (+ retriable-status-codes).
    assert codes["retry_on"] == "unavailable,retriable-status-codes"
    assert codes["retriable_status_codes"] == [503]
    assert codes["num_retries"] == 3
    _check_route(route_for_path(rs, "/x.Y/Z"), {"name": "default"})


def test_gateway_refuses_internal_rpcs_before_the_service_routes(config: dict[str, Any]) -> None:
    rs = routes(config, "gateway")
    for path in INTERNAL_METHODS:
        r = route_for_path(rs, path)
        assert r["match"] == {"path": path}
        assert r["direct_response"]["status"] == 403  # gRPC: PERMISSION_DENIED
    public = [
        "/phoneseller.order.v1.OrderService/PlaceOrder",
        "/phoneseller.payment.v1.PaymentService/GetPayment",
        "/phoneseller.promotion.v1.PromotionService/GetPointBalance",
        "/phoneseller.store.v1.StoreService/ShipOrder",
        "/phoneseller.customer.v1.CustomerService/GetCustomerHistory",
    ]
    for path in public:
        assert "route" in route_for_path(rs, path)
    for path in (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
    ):
        assert route_for_path(rs, path)["route"]["cluster"] == "gateway|order"
    # Nothing else is routed: a method of ours that is not public is refused (403, gRPC
    # PERMISSION_DENIED) and anything else does not exist (404, gRPC UNIMPLEMENTED).
    not_public = route_for_path(rs, "/phoneseller.order.v1.OrderService/DeleteEverything")
    assert not_public["direct_response"]["status"] == 403
    assert route_for_path(rs, "/grpc.health.v1.Health/Watch")["direct_response"]["status"] == 404


# -- faults -------------------------------------------------------------------------------


def test_faults_sit_on_the_inbound_listeners_of_the_destination(
    policy: MeshPolicy, topo: Topology
) -> None:
    faulty = policy.with_fault("promotion", parse_fault({**DELAY, **ABORT}))
    config = render_envoy_config(faulty, topo, None)
    for inst in topo.instances["promotion"]:
        name = f"inbound|promotion|{inst.index}"
        assert http_filter_names(config, name) == [
            "envoy.filters.http.fault",
            "envoy.filters.http.router",
        ]
        (r,) = routes(config, name)
        fault = r["typed_per_filter_config"]["envoy.filters.http.fault"]
        assert fault["delay"] == {
            "fixed_delay": "1s",
            "percentage": {"numerator": 1_000_000, "denominator": "MILLION"},
        }
        assert fault["abort"] == {
            "grpc_status": 14,
            "percentage": {"numerator": 500_000, "denominator": "MILLION"},
        }
    for inst in topo.instances["payment"]:
        (r,) = routes(config, f"inbound|payment|{inst.index}")
        assert "typed_per_filter_config" not in r
    # The client-side listeners and the gateway carry no fault in this placement.
    for lname in ("gateway", "outbound|promotion", "outbound|payment"):
        assert "envoy.filters.http.fault" not in http_filter_names(config, lname)
        assert all("typed_per_filter_config" not in r for r in routes(config, lname))


def test_outbound_placement_renders_the_fault_on_the_routes_as_istio(
    policy: MeshPolicy, topo: Topology
) -> None:
    faulty = policy.with_fault("promotion", parse_fault(DELAY))
    config = render_envoy_config(
        faulty, topo, None, options=RenderOptions(fault_placement="outbound")
    )
    for lname in ("outbound|promotion", "gateway"):
        assert http_filter_names(config, lname)[-2:] == [
            "envoy.filters.http.fault",
            "envoy.filters.http.router",
        ]
        promo = [r for r in routes(config, lname) if r["name"].startswith("promotion.")]
        assert promo
        for r in promo:
            assert (
                r["typed_per_filter_config"]["envoy.filters.http.fault"]["delay"]["fixed_delay"]
                == "1s"
            )
    for inst in topo.instances["promotion"]:
        assert "envoy.filters.http.fault" not in http_filter_names(
            config, f"inbound|promotion|{inst.index}"
        )


def test_fault_without_percentage_renders_as_istio_does(policy: MeshPolicy, topo: Topology) -> None:
    # Istio falls back to the deprecated integer `percent` (0 unless set): no request delayed.
    faulty = policy.with_fault("promotion", parse_fault({"delay": {"fixedDelay": "1s"}}))
    (r,) = routes(render_envoy_config(faulty, topo, None), "inbound|promotion|0")
    assert r["typed_per_filter_config"]["envoy.filters.http.fault"]["delay"]["percentage"] == {
        "numerator": 0,
        "denominator": "HUNDRED",
    }


# -- transcoding --------------------------------------------------------------------------


def test_transcoder_lists_the_public_services_in_the_descriptor_set(
    policy: MeshPolicy, topo: Topology, descriptor_set: Path
) -> None:
    config = render_envoy_config(policy, topo, descriptor_set)
    (f,) = [
        f
        for f in hcm(listener(config, "gateway"))["http_filters"]
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    tc = f["typed_config"]
    known = descriptor_services(descriptor_set)
    assert "phoneseller.order.v1.OrderService" in tc["services"]
    assert set(tc["services"]) == known & set(GRPC_SERVICES.values())
    assert tc["proto_descriptor"] == str(descriptor_set.resolve())
    assert tc["convert_grpc_status"] is True
    assert tc["print_options"]["always_print_primitive_fields"] is True
    assert tc["print_options"]["preserve_proto_field_names"] is True
    # Client-set claims go first (nothing may read them), then the transcoder, so that the
    # token checks see the gRPC path of an HTTP/JSON request.
    assert http_filter_names(config, "gateway") == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]


def test_no_descriptor_set_means_grpc_only_and_a_missing_one_is_an_error(
    policy: MeshPolicy, topo: Topology, tmp_path: Path
) -> None:
    config = render_envoy_config(policy, topo, None)
    assert "envoy.filters.http.grpc_json_transcoder" not in http_filter_names(config, "gateway")
    with pytest.raises(RenderError, match="does not exist"):
        render_envoy_config(policy, topo, tmp_path / "nope.binpb")


# -- topology and CLI ---------------------------------------------------------------------


def test_topology_defaults_and_client_env() -> None:
    topo = default_topology()
    assert topo.gateway == Address("127.0.0.1", 8080)
    assert topo.admin == Address("127.0.0.1", 9901)
    assert topo.client_env() == {
        "PHONESELLER_PAYMENT_ADDRESS": "127.0.0.1:15052",
        "PHONESELLER_PROMOTION_ADDRESS": "127.0.0.1:15053",
    }
    assert [i.address.port for i in topo.all_instances()] == [50055, 50051, 50052, 50053, 50054]
    inbound = [i.inbound.port for i in topo.all_instances()]
    assert len(set(inbound)) == len(inbound)


def test_topology_rejects_port_collisions() -> None:
    with pytest.raises(TopologyError, match="15052"):
        build_topology({"order": ["127.0.0.1:50051"]}, gateway_port=15052)
    with pytest.raises(TopologyError, match="collides"):
        build_topology({"order": ["127.0.0.1:8080"]})


def test_render_rejects_instances_of_unknown_destinations(policy: MeshPolicy) -> None:
    with pytest.raises(RenderError, match="billing"):
        render_envoy_config(policy, build_topology({"billing": ["127.0.0.1:50070"]}), None)


def test_cli_renders_validates_and_applies_fault_overrides(
    tmp_path: Path, values_path: Path, envoy_available: Path
) -> None:
    out = tmp_path / "envoy.yaml"
    cmd = [
        sys.executable,
        "-m",
        "mesh",
        "render",
        "--values",
        str(values_path),
        "--out",
        str(out),
        "--no-transcoding",
        "--gateway-port",
        "18080",
        "--admin-port",
        "19901",
        "--instances",
        "order=127.0.0.1:50051,payment=127.0.0.1:50052,promotion=127.0.0.1:50053",
        "--instances",
        "promotion=127.0.0.1:50063",
        "--fault",
        'promotion={"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":100}}}',
        "--validate",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(out.read_text())
    assert listener(config, "gateway")["address"]["socket_address"]["port_value"] == 18080
    assert config["admin"]["address"]["socket_address"]["port_value"] == 19901
    assert (
        len(
            cluster(config, "outbound|promotion")["load_assignment"]["endpoints"][0]["lb_endpoints"]
        )
        == 2
    )
    (r,) = routes(config, "inbound|promotion|1")
    assert r["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"]["grpc_status"] == 14

    bad = subprocess.run(
        [*cmd[:4], "--values", str(values_path), "--out", str(out), "--fault", "promotion={nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2
    assert "promotion" in bad.stderr

    env = subprocess.run(
        [sys.executable, "-m", "mesh", "env"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert env.stdout.split() == [
        "PHONESELLER_PAYMENT_ADDRESS=127.0.0.1:15052",
        "PHONESELLER_PROMOTION_ADDRESS=127.0.0.1:15053",
    ]


def test_gateway_exposes_exactly_the_charts_public_methods(
    policy: MeshPolicy, topo: Topology, values_path: Path, descriptor_set: Path
) -> None:
    """The chart's ingress routes `services.<svc>.publicMethods` only; the local gateway routes
    service prefixes minus INTERNAL_METHODS. Both must expose the same methods of the protos."""
    services = (yaml.safe_load(values_path.read_text()) or {}).get("services") or {}
    if not any("publicMethods" in (s or {}) for s in services.values()):
        pytest.skip("the chart's values have no services.<svc>.publicMethods yet")
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    methods = {
        f"{f.package}.{s.name}": [m.name for m in s.method] for f in fds.file for s in f.service
    }
    rs = routes(render_envoy_config(policy, topo, descriptor_set), "gateway")
    for name, svc in services.items():
        full = svc["grpcService"]
        assert full == GRPC_SERVICES[name]
        assert full in methods, f"{full} is not in {descriptor_set}"
        for method in methods[full]:
            path = f"/{full}/{method}"
            try:
                r = route_for_path(rs, path)
            except AssertionError:
                r = {}
            exposed = "route" in r
            assert exposed == (method in svc.get("publicMethods", [])), path
