"""What the chart gives Istio's Prometheus, Grafana, Kiali and Jaeger (docs/observability.md):
the metrics port and its annotations, the OTEL_* settings and the Telemetry resource, the
PodMonitor (validated against prometheus-operator's schema), the dashboards' ConfigMaps, and
NOTES that find the gateway whether its load balancer gives an IP or a hostname."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered

RenderValues = Callable[[dict[str, Any]], Rendered]

PODMONITOR_SCHEMA = (
    Path(__file__).resolve().parent
    / "schemas"
    / "prometheus-operator-0.80.1-podmonitor.schema.json"
)
DASHBOARDS = chartkit.CHART_DIR / "dashboards"
TRACING_ON = {"observability": {"tracing": {"enabled": True}}}
ALL_ON = {
    "observability": {
        "tracing": {"enabled": True, "samplingPercent": 5},
        "dashboards": {"enabled": True, "namespace": "monitoring"},
        "metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    }
}


@cache
def podmonitor_validator() -> Any:
    schema = chartkit.close_schema(json.loads(PODMONITOR_SCHEMA.read_text()))
    # The API server needs these; the package's model leaves them optional.
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft202012Validator(schema)


def podmonitor_errors(obj: Obj) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in podmonitor_validator().iter_errors(obj)
    ]


def config_data(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.get("ConfigMap", "phoneseller-config")["data"]
    return data


# --- tracing ------------------------------------------------------------------------------


def test_tracing_is_off_by_default(default_render: Rendered) -> None:
    assert not [name for name in config_data(default_render) if name.startswith("OTEL_")]
    assert default_render.of_kind("Telemetry") == []


def test_tracing_on_sets_the_standard_variables_and_a_valid_telemetry(
    render_values: RenderValues,
) -> None:
    rendered = render_values(ALL_ON)
    tracing = rendered.values["observability"]["tracing"]
    data = config_data(rendered)
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == tracing["otlpEndpoint"]
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert float(data["OTEL_TRACES_SAMPLER_ARG"]) == pytest.approx(0.05)
    assert data["OTEL_PROPAGATORS"] == tracing["propagators"]
    # The propagator Istio's opentelemetry provider rewrites is read last (services/kit/tracing.py).
    assert data["OTEL_PROPAGATORS"].split(",")[-2] == "tracecontext"
    (telemetry,) = rendered.of_kind("Telemetry")
    assert chartkit.istio_schemas().errors(telemetry) == []
    (rule,) = telemetry["spec"]["tracing"]
    assert rule["providers"] == [{"name": tracing["istioProvider"]}]
    assert rule["randomSamplingPercentage"] == 5
    # It covers every pod of the release.
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert telemetry["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_without_istio_tracing_renders_no_telemetry(render_values: RenderValues) -> None:
    values = chartkit.deep_merge(chartkit.example_values("no-istio-values.yaml"), TRACING_ON)
    rendered = render_values(values)
    assert rendered.of_kind("Telemetry") == []
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in config_data(rendered)


def test_a_sampling_rate_over_100_is_refused(chart: Any) -> None:
    values = {"observability": {"tracing": {"enabled": True, "samplingPercent": 150}}}
    with pytest.raises(Exception, match="samplingPercent"):
        chartkit.render(chart, values)


# --- metrics ------------------------------------------------------------------------------


def test_every_pod_serves_metrics_on_the_configured_port(render_values: RenderValues) -> None:
    rendered = render_values({"observability": {"metrics": {"port": 9555}}})
    assert config_data(rendered)["PHONESELLER_METRICS_PORT"] == "9555"
    for deployment in rendered.of_kind("Deployment"):
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "9555"
        (container,) = template["spec"]["containers"]
        assert {"name": "http-metrics", "containerPort": 9555, "protocol": "TCP"} in container[
            "ports"
        ]


@pytest.mark.parametrize("port", [50051, 15020, 15090])
def test_a_metrics_port_that_collides_is_refused(chart: Any, port: int) -> None:
    with pytest.raises(Exception, match="port"):
        chartkit.render(chart, {"observability": {"metrics": {"port": port}}})


@pytest.mark.parametrize("istio", [True, False])
def test_the_podmonitor_is_valid_and_scrapes_the_right_endpoint(
    render_values: RenderValues, istio: bool
) -> None:
    values = (
        ALL_ON
        if istio
        else chartkit.deep_merge(chartkit.example_values("no-istio-values.yaml"), ALL_ON)
    )
    rendered = render_values(values)
    (monitor,) = rendered.of_kind("PodMonitor")
    assert podmonitor_errors(monitor) == []
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    if istio:
        # Prometheus is outside the mesh: the agent's merged endpoint, not the mTLS'd port.
        assert endpoint["path"] == "/stats/prometheus"
        (relabel,) = endpoint["relabelings"]
        assert (
            re.sub(
                relabel["regex"], relabel["replacement"].replace("${1}", r"\1"), "10.0.0.7:15090"
            )
            == "10.0.0.7:15020"
        )
    else:
        assert (endpoint["port"], endpoint["path"]) == ("http-metrics", "/metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert "app" in labels  # podTargetLabels: the dashboard groups by it


def test_a_misspelled_podmonitor_field_is_caught(render_values: RenderValues) -> None:
    (monitor,) = render_values(ALL_ON).of_kind("PodMonitor")
    broken = copy.deepcopy(monitor)
    broken["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("intervall" in error for error in podmonitor_errors(broken))


def test_scrapers_are_let_in_on_the_metrics_ports(render_values: RenderValues) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    for base, expected in (
        ({}, {15020, 15090}),
        (chartkit.example_values("no-istio-values.yaml"), {9464}),
    ):
        values = chartkit.deep_merge(base, {"observability": {"metrics": {"scrapers": [peer]}}})
        rendered = render_values(values)
        for policy in rendered.of_kind("NetworkPolicy"):
            if policy["metadata"]["name"].endswith("-test"):
                continue
            rules = [r for r in policy["spec"]["ingress"] if r.get("from") == [peer]]
            assert len(rules) == 1, policy["metadata"]["name"]
            assert {p["port"] for p in rules[0]["ports"]} == expected


# --- dashboards ---------------------------------------------------------------------------


def test_dashboards_are_opt_in(default_render: Rendered) -> None:
    assert not [n for n in default_render.names("ConfigMap") if "dashboard" in n]


def test_every_dashboard_is_a_configmap_for_grafanas_sidecar(render_values: RenderValues) -> None:
    rendered = render_values(ALL_ON)
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files
    for path in files:
        config_map = rendered.get("ConfigMap", f"phoneseller-dashboard-{path.stem}")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        shipped = json.loads(config_map["data"][path.name])
        assert shipped == json.loads(path.read_text())
        assert shipped["uid"] and shipped["panels"]


# --- NOTES --------------------------------------------------------------------------------


def kubectl_jsonpath(template: str, obj: Obj) -> str:
    """What `kubectl -o jsonpath=TEMPLATE` prints for obj, for the simple paths NOTES uses
    (`{.a.b[0].c}` pieces, concatenated; a missing field prints nothing, as kubectl does)."""
    out = []
    for path in re.findall(r"\{([^}]*)\}", template):
        value: Any = obj
        for name, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", path):
            value = value.get(name) if isinstance(value, dict) else None
            if index and isinstance(value, list):
                value = value[int(index)] if int(index) < len(value) else None
        if value is not None:
            out.append(str(value))
    return "".join(out)


def gateway_services(ingress: dict[str, str]) -> Obj:
    return {
        "kind": "List",
        "items": [
            {
                "metadata": {"name": "istio-ingressgateway"},
                "status": {"loadBalancer": {"ingress": [ingress]}},
            }
        ],
    }


@pytest.mark.parametrize(
    "ingress",
    [{"ip": "203.0.113.10"}, {"hostname": "a1b2c3.elb.eu-west-1.amazonaws.com"}],
    ids=["ip", "hostname"],
)
def test_notes_find_the_gateway_with_an_ip_or_a_hostname(
    default_render: Rendered, ingress: dict[str, str]
) -> None:
    match = re.search(
        r"export GATEWAY=\$\(kubectl .* -o jsonpath='([^']+)'\)", default_render.notes
    )
    assert match, default_render.notes
    assert kubectl_jsonpath(match[1], gateway_services(ingress)) == next(iter(ingress.values()))


def test_notes_point_at_the_tests_and_the_dashboards(render_values: RenderValues) -> None:
    notes = render_values(ALL_ON).notes
    assert "helm test phoneseller -n shop --logs" in notes
    for tool in ("kiali", "grafana", "jaeger"):
        assert f"istioctl dashboard {tool}" in notes
    assert "phoneseller-dashboard-phoneseller in monitoring" in notes
    assert "PodMonitor phoneseller" in notes
    off = render_values(chartkit.example_values("no-istio-values.yaml")).notes
    assert "istioctl" not in off
    assert "helm/phoneseller/dashboards/phoneseller.json" in off


# --- the NATS chart's exporter --------------------------------------------------------------


def test_the_nats_example_turns_on_its_exporter_and_podmonitor() -> None:
    nats = chartkit.example_values("nats-jetstream-values.yaml")
    assert nats["config"]["jetstream"]["enabled"]  # the exporter then reads -jsz=all
    assert nats["promExporter"]["enabled"]
    assert nats["promExporter"]["podMonitor"]["enabled"]
