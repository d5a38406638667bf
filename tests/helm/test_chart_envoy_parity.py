"""One policy, two renderings: every number of the chart's DestinationRules (subsets included)
and VirtualServices equals the local Envoy configuration that mesh/ renders from the same values.

The chart renders the policy for Istio's sidecars and ingress gateway; mesh/ renders it for the
Envoy that plays them on one machine (what `make run` and the e2e tests use). Istio turns a
DestinationRule subset into a cluster of its own (outbound|<port>|<subset>|<host>) whose policy
is the subset's merged over the top-level one; locally that is `<side>|<service>|<subset>`.
If either rendering drifts, this fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from mesh.envoy import cluster_name, render_envoy_config
from mesh.policy import load_policy
from mesh.topology import INTERNAL_METHODS, default_topology
from tests.helm import chartkit
from tests.helm.chartkit import Rendered

SERVICES = ("order", "payment", "promotion", "store", "customer")
SIDECARS = ("payment", "promotion")
VALUES = chartkit.CHART_DIR / "values.yaml"
# The TrafficPolicy fields a subset's trafficPolicy replaces whole (docs/mesh.md, subsets).
SUBSET_MERGED_FIELDS = ("connectionPool", "outlierDetection", "loadBalancer", "tls")


def envoy_seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    return render_envoy_config(load_policy(VALUES), default_topology(), chartkit.DESCRIPTORS)


def cluster(envoy: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in envoy["static_resources"]["clusters"] if c["name"] == name
    )
    return found


def envoy_routes(envoy: dict[str, Any], listener_name: str) -> list[dict[str, Any]]:
    listener = next(
        item for item in envoy["static_resources"]["listeners"] if item["name"] == listener_name
    )
    routes: list[dict[str, Any]] = []
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            config = network_filter["typed_config"].get("route_config", {})
            for host in config.get("virtual_hosts", []):
                routes.extend(host["routes"])
    return routes


def chart_object(rendered: Rendered, kind: str, service: str) -> dict[str, Any]:
    objects = [o for o in rendered.of_kind(kind) if o["metadata"]["name"].endswith(f"-{service}")]
    assert len(objects) == 1, [o["metadata"]["name"] for o in objects]
    return objects[0]


def subset_policy(rule: dict[str, Any], subset: str) -> dict[str, Any]:
    """The traffic policy Istio gives a subset's cluster: the subset's fields over the rule's."""
    (found,) = [s for s in rule["spec"]["subsets"] if s["name"] == subset]
    merged = dict(rule["spec"]["trafficPolicy"])
    merged.update(
        {k: v for k, v in found.get("trafficPolicy", {}).items() if k in SUBSET_MERGED_FIELDS}
    )
    return merged


def assert_cluster_numbers(rendered: dict[str, Any], policy: dict[str, Any]) -> None:
    name = rendered["name"]
    pool, outlier = policy["connectionPool"], policy["outlierDetection"]
    limits = rendered["circuit_breakers"]["thresholds"][0]
    assert limits["max_connections"] == pool["tcp"]["maxConnections"], name
    assert limits["max_requests"] == pool["http"]["http2MaxRequests"], name
    assert limits["max_pending_requests"] == pool["http"]["http1MaxPendingRequests"], name
    if pool["http"].get("maxRetries"):
        assert limits["max_retries"] == pool["http"]["maxRetries"], name
    assert envoy_seconds(rendered["connect_timeout"]) == chartkit.duration_seconds(
        pool["tcp"]["connectTimeout"]
    ), name
    detection = rendered["outlier_detection"]
    assert detection["consecutive_5xx"] == outlier["consecutive5xxErrors"], name
    if "consecutiveGatewayErrors" in outlier:
        gateway_errors = outlier["consecutiveGatewayErrors"]
        assert detection["consecutive_gateway_failure"] == gateway_errors, name
    interval = chartkit.duration_seconds(outlier["interval"])
    assert envoy_seconds(detection["interval"]) == interval, name
    ejection = chartkit.duration_seconds(outlier["baseEjectionTime"])
    assert envoy_seconds(detection["base_ejection_time"]) == ejection, name
    assert detection["max_ejection_percent"] == outlier["maxEjectionPercent"], name


@pytest.mark.parametrize("service", SERVICES)
def test_destination_rule_numbers_equal_the_envoy_cluster(
    default_render: Rendered, envoy: dict[str, Any], service: str
) -> None:
    policy = chart_object(default_render, "DestinationRule", service)["spec"]["trafficPolicy"]
    names = [f"gateway|{service}"] + ([f"outbound|{service}"] if service in SIDECARS else [])
    for name in names:
        assert_cluster_numbers(cluster(envoy, name), policy)


def test_every_subsets_numbers_equal_its_envoy_cluster(
    default_render: Rendered, envoy: dict[str, Any]
) -> None:
    """Each subset of each DestinationRule is a local cluster of its own with the subset's
    policy merged over the rule's, on every side whose routes send to it."""
    local = {c["name"] for c in envoy["static_resources"]["clusters"]}
    checked = []
    for service in SERVICES:
        rule = chart_object(default_render, "DestinationRule", service)
        for subset in rule["spec"].get("subsets", []):
            names = [
                name
                for name in (
                    cluster_name(service, "outbound", subset["name"]),
                    cluster_name(service, "gateway", subset["name"]),
                )
                if name in local
            ]
            assert names, f"{service} subset {subset['name']} has no local cluster"
            for name in names:
                assert_cluster_numbers(cluster(envoy, name), subset_policy(rule, subset["name"]))
                checked.append(name)
    assert "outbound|promotion|clawback" in checked


@pytest.mark.parametrize("service", ["payment", "promotion"])
def test_virtual_service_routes_equal_the_envoy_sidecar_routes(
    default_render: Rendered, envoy: dict[str, Any], service: str
) -> None:
    """The east-west calls (order → payment, payment → promotion) pass Envoy's sidecar
    listeners; their routes carry the VirtualService's timeout and retries, route by route."""
    http_routes = chart_object(default_render, "VirtualService", service)["spec"]["http"]
    local = envoy_routes(envoy, f"outbound|{service}")
    assert len(local) == len(http_routes)
    for istio, rendered in zip(http_routes, local, strict=True):
        if "match" in istio:
            assert [m["uri"]["exact"] for m in istio["match"]] == [rendered["match"]["path"]]
        else:
            assert rendered["match"] == {"prefix": "/"}
        action = rendered["route"]
        # The same destination: the host, or the same subset of it.
        (destination,) = istio["route"]
        subset = destination["destination"].get("subset")
        assert action["cluster"] == cluster_name(service, "outbound", subset), istio["name"]
        assert envoy_seconds(action["timeout"]) == chartkit.duration_seconds(istio["timeout"])
        retries = istio["retries"]
        if retries["attempts"] == 0:
            assert "retry_policy" not in action, istio["name"]
            continue
        policy = action["retry_policy"]
        assert policy["num_retries"] == retries["attempts"]
        assert policy["retry_on"] == retries["retryOn"]
        assert envoy_seconds(policy["per_try_timeout"]) == chartkit.duration_seconds(
            retries["perTryTimeout"]
        )


def gateway_route_for(envoy: dict[str, Any], path: str) -> dict[str, Any]:
    """The route the local gateway picks for a gRPC path (first match, exact or prefix)."""
    for route in envoy_routes(envoy, "gateway"):
        match = route["match"]
        if match.get("path") == path or path.startswith(match.get("prefix", "\0")):
            return route
    raise AssertionError(f"the local gateway routes no {path}")


def test_ingress_routes_equal_the_local_gateway_routes(
    default_render: Rendered, envoy: dict[str, Any]
) -> None:
    """Every public RPC the chart's ingress routes goes, at the local gateway, to the cluster of
    the same destination (host or subset) with the same timeout and retries."""
    ingress = next(
        v for v in default_render.of_kind("VirtualService") if v["spec"]["gateways"] != ["mesh"]
    )
    services = {v["grpcService"]: name for name, v in default_render.values["services"].items()}
    for istio in ingress["spec"]["http"]:
        (match,) = istio["match"]
        path = match["uri"]["exact"]
        assert path not in INTERNAL_METHODS
        service = services[path.strip("/").split("/")[0]]
        (destination,) = istio["route"]
        subset = destination["destination"].get("subset")
        rendered = gateway_route_for(envoy, path)
        action = rendered["route"]
        assert action["cluster"] == cluster_name(service, "gateway", subset), path
        assert envoy_seconds(action["timeout"]) == chartkit.duration_seconds(istio["timeout"])
        if istio["retries"]["attempts"] == 0:
            assert "retry_policy" not in action, path
        else:
            assert action["retry_policy"]["num_retries"] == istio["retries"]["attempts"], path


def test_customers_reads_and_the_clawback_meet_different_breakers_in_both(
    default_render: Rendered, envoy: dict[str, Any]
) -> None:
    """The breaker guards the clawback only: in the chart the clawback's route names the
    subset with the seed's tight pool and GetPointBalance at the ingress goes to the host with
    its ample pool; locally the same two routes go to two clusters with those same numbers."""
    rule = chart_object(default_render, "DestinationRule", "promotion")
    mesh_routes = chart_object(default_render, "VirtualService", "promotion")["spec"]["http"]
    (claw,) = [r for r in mesh_routes if r["name"] == "claw-back-points"]
    subset = claw["route"][0]["destination"]["subset"]
    ingress = next(
        r
        for v in default_render.of_kind("VirtualService")
        if v["spec"]["gateways"] != ["mesh"]
        for r in v["spec"]["http"]
        if r["match"][0]["uri"]["exact"].endswith("/GetPointBalance")
    )
    assert "subset" not in ingress["route"][0]["destination"]
    tight = subset_policy(rule, subset)["connectionPool"]["http"]
    ample = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    assert (tight["http2MaxRequests"], tight["http1MaxPendingRequests"]) == (32, 8)
    assert ample["http2MaxRequests"] >= 100 and ample["http1MaxPendingRequests"] >= 100

    claw_cluster = next(
        r
        for r in envoy_routes(envoy, "outbound|promotion")
        if r["match"].get("path", "").endswith("/ClawBackPoints")
    )["route"]["cluster"]
    read_cluster = gateway_route_for(
        envoy, "/phoneseller.promotion.v1.PromotionService/GetPointBalance"
    )["route"]["cluster"]
    assert (claw_cluster, read_cluster) == ("outbound|promotion|clawback", "gateway|promotion")
    for name, http in ((claw_cluster, tight), (read_cluster, ample)):
        limits = cluster(envoy, name)["circuit_breakers"]["thresholds"][0]
        assert limits["max_requests"] == http["http2MaxRequests"], name
        assert limits["max_pending_requests"] == http["http1MaxPendingRequests"], name


def test_the_seeds_clawback_numbers_are_in_both(
    default_render: Rendered, envoy: dict[str, Any]
) -> None:
    claw = next(
        r
        for r in envoy_routes(envoy, "outbound|promotion")
        if r["match"].get("path", "").endswith("/ClawBackPoints")
    )
    assert claw["route"]["timeout"] == "0.61s"
    istio = chart_object(default_render, "VirtualService", "promotion")["spec"]["http"][0]
    assert istio["timeout"] == "610ms"
