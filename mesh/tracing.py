"""Envoy's OpenTelemetry tracer for the local mesh: the proxies' spans beside the services'.

In a cluster Istio's sidecars and gateway record a span per request and hop (the chart's
Telemetry resource, docs/observability.md). Locally the one Envoy plays all of them; when an
OTLP endpoint is set, `with_tracing` adds the `envoy.tracers.opentelemetry` tracer to every HTTP
connection manager of a rendered bootstrap, each listener under a service name of its own
(`envoy-gateway`, `envoy-outbound-payment`, `envoy-inbound-order-0`), exporting over OTLP/gRPC
to the same collector as the services, so sidecar spans and service spans form one tree.
Without an endpoint nothing changes: the rendered configuration stays byte for byte the same.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mesh.topology import Address

__all__ = ["COLLECTOR_CLUSTER", "collector_address", "sampling_percent", "with_tracing"]

Json = dict[str, Any]

COLLECTOR_CLUSTER = "opentelemetry_collector"
_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: OTLP/gRPC's port when the endpoint names none.
OTLP_GRPC_PORT = 4317
FLUSH_INTERVAL_MS = 1000


def collector_address(endpoint: str) -> Address:
    """host:port of an OTLP/gRPC endpoint given as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it
    (`http://127.0.0.1:4317`, `127.0.0.1:4317`)."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parts.hostname:
        raise ValueError(f"{endpoint!r} names no host")
    return Address(parts.hostname, parts.port or OTLP_GRPC_PORT)


#: The OpenTelemetry samplers that keep a share of the traces (OTEL_TRACES_SAMPLER_ARG).
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def sampling_percent(env: Mapping[str, str]) -> float:
    """The share of new traces the proxies start, from the same `OTEL_TRACES_SAMPLER` and
    `OTEL_TRACES_SAMPLER_ARG` the services read: 100 unless a ratio sampler says otherwise.

    The gateway is where a request from outside gets its trace, so its sampling is the one
    that counts (the services' parent-based samplers follow it, as in Istio, whose ingress
    gateway decides); measured: with the services at 1 % and the gateway at 100 %, tracing
    still cost half the throughput (docs/observability.md, "Cost")."""
    if env.get("OTEL_TRACES_SAMPLER", "").strip().lower() not in _RATIO_SAMPLERS:
        return 100.0
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        return 100.0
    return min(max(ratio, 0.0), 1.0) * 100.0


def _service_name(listener: str) -> str:
    return "envoy-" + listener.replace("|", "-")


def _direction(listener: str) -> str | None:
    # The span kind Envoy records: a client-side sidecar's spans are CLIENT (egress), an
    # inbound sidecar's and the gateway's SERVER (ingress, Envoy's default).
    if listener.startswith("outbound|"):
        return "OUTBOUND"
    if listener.startswith("inbound|"):
        return "INBOUND"
    return None


def with_tracing(config: Json, endpoint: str, percent: float = 100.0) -> Json:
    """A copy of an Envoy bootstrap whose HTTP connection managers trace to `endpoint`,
    starting a trace for `percent` of the requests that arrive without a sampling decision
    (a request whose traceparent says sampled or not keeps that decision)."""
    traced = copy.deepcopy(config)
    collector = collector_address(endpoint)
    # Envoy sends its spans every 5 s by default; a second keeps a trace whole sooner.
    for layer in traced.get("layered_runtime", {}).get("layers", []):
        if "static_layer" in layer:
            layer["static_layer"]["tracing.opentelemetry.flush_interval_ms"] = FLUSH_INTERVAL_MS
            break
    resources = traced["static_resources"]
    for listener in resources["listeners"]:
        name = listener["name"]
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                if network_filter.get("name") != _HCM_FILTER:
                    continue
                network_filter["typed_config"]["tracing"] = {
                    "provider": {
                        "name": "envoy.tracers.opentelemetry",
                        "typed_config": {
                            "@type": _OTEL,
                            "grpc_service": {
                                "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER},
                                "timeout": "1s",
                            },
                            "service_name": _service_name(name),
                        },
                    },
                    "random_sampling": {"value": percent},
                }
        if direction := _direction(name):
            listener["traffic_direction"] = direction
    resources["clusters"].append(
        {
            "name": COLLECTOR_CLUSTER,
            "type": "STATIC" if collector.is_ip else "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                _HTTP_OPTS_KEY: {
                    "@type": _HTTP_OPTS,
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": COLLECTOR_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": collector.host,
                                            "port_value": collector.port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    return traced
