"""One policy, two renderings: every number of the chart's DestinationRules and mesh
VirtualServices equals the local Envoy configuration that mesh/ renders from the same values.

The chart renders the policy for Istio's sidecars; mesh/ renders it for the Envoy that plays
them on one machine (what `make run` and the e2e tests use). If either drifts, this fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from mesh.envoy import render_envoy_config
from mesh.policy import load_policy
from mesh.topology import default_topology
from tests.helm import chartkit
from tests.helm.chartkit import Rendered

SERVICES = ("order", "payment", "promotion", "store", "customer")
VALUES = chartkit.CHART_DIR / "values.yaml"


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


@pytest.mark.parametrize("service", SERVICES)
def test_destination_rule_numbers_equal_the_envoy_cluster(
    default_render: Rendered, envoy: dict[str, Any], service: str
) -> None:
    policy = chart_object(default_render, "DestinationRule", service)["spec"]["trafficPolicy"]
    pool, outlier = policy["connectionPool"], policy["outlierDetection"]
    names = [f"gateway|{service}"] + (
        [f"outbound|{service}"] if service in ("payment", "promotion") else []
    )
    for name in names:
        rendered = cluster(envoy, name)
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
            assert (
                detection["consecutive_gateway_failure"] == (outlier["consecutiveGatewayErrors"])
            ), name
        assert envoy_seconds(detection["interval"]) == chartkit.duration_seconds(
            outlier["interval"]
        ), name
        assert envoy_seconds(detection["base_ejection_time"]) == chartkit.duration_seconds(
            outlier["baseEjectionTime"]
        ), name
        assert detection["max_ejection_percent"] == outlier["maxEjectionPercent"], name


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
