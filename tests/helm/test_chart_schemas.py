"""The chart lints clean and renders only valid objects; wrong values and wrong fields fail.

Kubernetes objects are checked by kubernetes-validate (strict: unknown fields are errors) for
Kubernetes 1.31; Istio objects by the Istio 1.30.3 CRD schemas with unknown fields rejected.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.helm import chartkit
from tests.helm.chartkit import Rendered

RenderValues = Callable[[dict[str, Any]], Rendered]


@pytest.mark.parametrize("combination", list(chartkit.COMBINATIONS))
def test_helm_lint_strict_is_clean(combination: str) -> None:
    report = helm_python.lint(
        chartkit.CHART_DIR,
        chartkit.COMBINATIONS[combination],
        strict=True,
        namespace=chartkit.NAMESPACE,
        kube_version="v1.30.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_chart_metadata(chart: helm_python.Chart) -> None:
    """Helm refuses to install on clusters older than 1.30 (native sleep preStop, gRPC probes).
    `helm lint` does not check kubeVersion, so the metadata itself is asserted here."""
    metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == "0.1.0"
    assert metadata["kubeVersion"] == ">=1.30.0-0"


def test_every_object_is_valid_kubernetes_or_istio(rendered: Rendered) -> None:
    istio = chartkit.istio_schemas()
    problems: dict[str, Any] = {}
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if istio.handles(obj):
            if errors := istio.errors(obj):
                problems[where] = errors
            continue
        try:
            chartkit.validate_kubernetes(obj)
        except kubernetes_validate.ValidationError as error:
            problems[where] = f"{'.'.join(map(str, error.path))}: {error.message}"
        except kubernetes_validate.SchemaNotFoundError as error:
            problems[where] = error.message
    assert not problems, problems


def test_every_combination_renders_the_expected_kinds(rendered: Rendered) -> None:
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Secret", "Pod"} <= kinds
    assert len(rendered.of_kind("Deployment")) == len(chartkit.SERVICES)


# --- A misspelled field in a rendered object is caught ---------------------------------------


def rename_key(obj: dict[str, Any], path: list[Any], new_key: str) -> dict[str, Any]:
    """A copy of obj with the key at path (its last element) renamed."""
    broken = copy.deepcopy(obj)
    parent = broken
    for step in path[:-1]:
        parent = parent[step]
    parent[new_key] = parent.pop(path[-1])
    return broken


def test_a_misspelled_kubernetes_field_is_caught(default_render: Rendered) -> None:
    deployment = default_render.get("Deployment", "phoneseller-order")
    chartkit.validate_kubernetes(deployment)
    path = ["spec", "template", "spec", "containers", 0, "readinessProbe"]
    broken = rename_key(deployment, path, "readynessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        chartkit.validate_kubernetes(broken)


@pytest.mark.parametrize(
    ("kind", "name", "path", "new_key"),
    [
        ("VirtualService", "phoneseller-payment", ["spec", "http", 0, "timeout"], "timout"),
        (
            "DestinationRule",
            "phoneseller-promotion",
            ["spec", "trafficPolicy", "connectionPool", "tcp", "maxConnections"],
            "maxConnection",
        ),
        (
            "DestinationRule",
            "phoneseller-promotion",
            ["spec", "subsets", 0, "trafficPolicy", "connectionPool", "http", "http2MaxRequests"],
            "http2MaxRequest",
        ),
        (
            "VirtualService",
            "phoneseller-promotion",
            ["spec", "http", 0, "route", 0, "destination", "subset"],
            "subSet",
        ),
        ("AuthorizationPolicy", "phoneseller-payment", ["spec", "rules", 0, "from"], "form"),
        ("PeerAuthentication", "phoneseller-mtls", ["spec", "mtls"], "mTLS"),
        ("Gateway", "phoneseller-gateway", ["spec", "servers", 0, "hosts"], "host"),
    ],
)
def test_a_misspelled_istio_field_is_caught(
    default_render: Rendered, kind: str, name: str, path: list[Any], new_key: str
) -> None:
    istio = chartkit.istio_schemas()
    obj = default_render.get(kind, name)
    assert istio.errors(obj) == []
    errors = istio.errors(rename_key(obj, path, new_key))
    assert any(new_key in error for error in errors), errors


def test_an_istio_duration_without_unit_is_caught(default_render: Rendered) -> None:
    virtual_service = copy.deepcopy(default_render.get("VirtualService", "phoneseller-payment"))
    virtual_service["spec"]["http"][0]["timeout"] = "3"
    errors = chartkit.istio_schemas().errors(virtual_service)
    assert any("duration" in error for error in errors), errors


# --- Wrong values fail at install time (values.schema.json) ----------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"imgae": {"tag": "x"}}, "'imgae' not allowed"),
        ({"services": {"order": {"replica": 2}}}, "'replica' not allowed"),
        ({"services": {"ordr": {"replicas": 1}}}, "'ordr' not allowed"),
        ({"services": {"order": {"database": {"engine": "mysql"}}}}, "/services/order/database"),
        ({"config": {"logLevel": "VERBOSE"}}, "/config/logLevel"),
        ({"nats": {"url": "localhost:4222"}}, "/nats/url"),
        ({"istio": {"enabeld": False}}, "'enabeld' not allowed"),
        (
            {
                "mesh": {
                    "destinations": {
                        "promotion": {"trafficPolicy": {"outlierDetection": {"interval": "1"}}}
                    }
                }
            },
            "/mesh/destinations/promotion/trafficPolicy/outlierDetection/interval",
        ),
        (
            {
                "mesh": {
                    "destinations": {
                        "payment": {"fault": {"delay": {"fixedDelay": "1s", "percentag": 5}}}
                    }
                }
            },
            "'percentag' not allowed",
        ),
    ],
)
def test_misspelled_or_wrong_values_are_rejected(
    chart: helm_python.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        chartkit.render(chart, values)


CLAWBACK_SUBSET = {"trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 4}}}}


@pytest.mark.parametrize(
    ("subsets", "complaint"),
    [
        ({"clawback": {**CLAWBACK_SUBSET, "labels": {"version": "v1"}}}, "'labels' not allowed"),
        ({"clawback": {"trafficPolicy": {"outlierDetecton": {}}}}, "'outlierDetecton' not allowed"),
        ({"Claw_Back": CLAWBACK_SUBSET}, "invalid propertyName 'Claw_Back'"),
    ],
)
def test_wrong_subsets_are_rejected(
    chart: helm_python.Chart, subsets: dict[str, Any], complaint: str
) -> None:
    values = {"mesh": {"destinations": {"promotion": {"subsets": subsets}}}}
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        chartkit.render(chart, values)


def test_a_route_to_a_missing_subset_and_an_unrouted_subset_are_rejected(
    chart: helm_python.Chart,
) -> None:
    """What the schema cannot see: a route naming a subset that does not exist (Istio would
    answer 503), and a subset no route names (its breaker would guard nothing)."""
    routes: list[dict[str, Any]] = [
        {"name": "claw", "methods": ["ClawBackPoints"], "subset": "clawbak"},
        {"name": "default", "timeout": "5s"},
    ]
    with pytest.raises(helm_python.HelmRenderError, match='no subset "clawbak"'):
        chartkit.render(chart, {"mesh": {"destinations": {"promotion": {"routes": routes}}}})
    unrouted = [{"name": "default", "timeout": "5s"}]
    with pytest.raises(helm_python.HelmRenderError, match="clawback: no route sends to it"):
        chartkit.render(chart, {"mesh": {"destinations": {"promotion": {"routes": unrouted}}}})
    bad_name = [{**routes[0], "subset": "Claw"}, routes[1]]
    with pytest.raises(helm_python.HelmValuesError, match="/mesh/destinations/promotion/routes/0"):
        chartkit.render(chart, {"mesh": {"destinations": {"promotion": {"routes": bad_name}}}})


def test_a_misspelled_mesh_route_field_is_rejected(chart: helm_python.Chart) -> None:
    routes = [{"name": "default", "timeout": "5s", "retries": {"attempts": 0}, "retires": 1}]
    values = {"mesh": {"destinations": {"store": {"routes": routes}}}}
    with pytest.raises(helm_python.HelmValuesError, match="'retires' not allowed"):
        chartkit.render(chart, values)


@pytest.mark.parametrize(
    "service_values",
    [{"replicas": 2}, {"autoscaling": {"enabled": True}}],
    ids=["replicas", "autoscaling"],
)
@pytest.mark.parametrize("service", chartkit.SERVICES)
def test_sqlite_cannot_scale_out(
    chart: helm_python.Chart, service: str, service_values: dict[str, Any]
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=f"/services/{service}"):
        chartkit.render(chart, {"services": {service: service_values}})


def test_sqlite_cannot_scale_out_even_without_the_schema(tmp_path: Path) -> None:
    """`helm install --skip-schema-validation` still refuses: the templates check too.
    (`helm lint` only logs a template's `fail`, so a copy without the schema is rendered.)"""
    shutil.copytree(chartkit.CHART_DIR, tmp_path / "phoneseller")
    (tmp_path / "phoneseller" / "values.schema.json").unlink()
    unchecked = helm_python.Chart.load(tmp_path / "phoneseller")
    for values in ({"replicas": 3}, {"autoscaling": {"enabled": True}}):
        with pytest.raises(helm_python.HelmRenderError, match="exactly one writer"):
            chartkit.render(unchecked, {"services": {"store": values}})


def test_postgresql_needs_a_url_or_a_secret(chart: helm_python.Chart) -> None:
    values = {"services": {"promotion": {"database": {"engine": "postgresql"}}}}
    with pytest.raises(helm_python.HelmValuesError, match="/services/promotion/database"):
        chartkit.render(chart, values)


def test_a_catch_all_route_must_come_last(chart: helm_python.Chart) -> None:
    routes = [
        {"name": "default", "timeout": "5s", "retries": {"attempts": 0}},
        {"name": "pay", "methods": ["Pay"], "timeout": "3s", "retries": {"attempts": 0}},
    ]
    with pytest.raises(helm_python.HelmRenderError, match="must be the last route"):
        chartkit.render(chart, {"mesh": {"destinations": {"payment": {"routes": routes}}}})
