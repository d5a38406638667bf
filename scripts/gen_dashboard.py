"""Writes helm/phoneseller/dashboards/phoneseller.json, the Grafana dashboard of the system.

The panels are listed here once, as (title, unit, queries); `--check` fails if the committed JSON
differs (tests/observability checks it too, and evaluates every query on a real Prometheus).
Queries read the services' metrics (services/kit/metrics.py) and Envoy's own, by the label
`app` that Istio's Prometheus (and the local one, stack/prometheus.py) gives each pod's series.
Grafana's variables: `$__rate_interval` and `$__range`; `$app` filters the services.

    .venv/bin/python scripts/gen_dashboard.py           # write
    .venv/bin/python scripts/gen_dashboard.py --check   # compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = (
    Path(__file__).resolve().parents[1] / "helm" / "phoneseller" / "dashboards" / "phoneseller.json"
)
APPS = 'app=~"$app"'
RATE = "$__rate_interval"

# Several sources for one figure: the first that has series wins (`or`), so a panel shows the
# broker's own numbers where the NATS exporter runs and the services' view of them elsewhere.
JETSTREAM_LAG = (
    'max by (consumer) (label_replace({__name__=~"nats_consumer_num_pending|'
    'jetstream_consumer_num_pending", stream_name="PHONESELLER"}, "consumer", "$1", '
    '"consumer_name", "(.+)")) or max by (consumer) (phoneseller_consumer_pending_events)'
)
# Envoy names the cluster `envoy_cluster_name` by default; Istio's sidecars `cluster_name`.
CLAWBACK_OVERFLOW = (
    "sum by (cluster) (label_replace(rate(envoy_cluster_upstream_rq_pending_overflow{"
    f'envoy_cluster_name=~"outbound.*promotion.*"}}[{RATE}]), "cluster", "$1", '
    '"envoy_cluster_name", "(.+)")) or sum by (cluster) (label_replace(rate('
    "envoy_cluster_upstream_rq_pending_overflow"
    f'{{cluster_name=~"outbound.*promotion.*"}}[{RATE}]), '
    '"cluster", "$1", "cluster_name", "(.+)"))'
)


def latency(quantile: float, methods: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le, grpc_method) (rate("
        f'grpc_server_handling_seconds_bucket{{grpc_service="phoneseller.order.v1.OrderService",'
        f' grpc_method=~"{methods}"}}[{RATE}])))'
    )


#: (title, kind, unit, [(legend, query)], width): the rows of the dashboard, in order.
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int]] = [
    (
        "Saga funnel (this range)",
        "bargauge",
        "short",
        [("{{outcome}}", "sum by (outcome) (increase(phoneseller_orders_total[$__range]))")],
        8,
    ),
    (
        "Saga rate",
        "timeseries",
        "ops",
        [("{{outcome}}", f"sum by (outcome) (rate(phoneseller_orders_total[{RATE}]))")],
        8,
    ),
    (
        "Payback points",
        "timeseries",
        "short",
        [
            ("granted /s", f"sum(rate(phoneseller_points_granted_total[{RATE}]))"),
            ("reversed /s", f"sum(rate(phoneseller_points_reversed_total[{RATE}]))"),
        ],
        8,
    ),
    (
        "PlaceOrder / CancelOrder latency",
        "timeseries",
        "s",
        [
            ("p50 {{grpc_method}}", latency(0.5, "PlaceOrder|CancelOrder")),
            ("p99 {{grpc_method}}", latency(0.99, "PlaceOrder|CancelOrder")),
        ],
        12,
    ),
    (
        "Error rate by service (share of RPCs not OK)",
        "timeseries",
        "percentunit",
        [
            (
                "{{app}}",
                "(sum by (app) (rate(grpc_server_handled_total"
                f'{{{APPS}, grpc_code!="OK"}}[{RATE}]))'
                f" or sum by (app) (rate(grpc_server_handled_total{{{APPS}}}[{RATE}])) * 0)"
                f" / sum by (app) (rate(grpc_server_handled_total{{{APPS}}}[{RATE}]))",
            )
        ],
        12,
    ),
    (
        "RPCs by service and code",
        "timeseries",
        "reqps",
        [
            (
                "{{app}} {{grpc_code}}",
                f"sum by (app, grpc_code) (rate(grpc_server_handled_total{{{APPS}}}[{RATE}]))",
            )
        ],
        12,
    ),
    (
        "Outbox: pending events and the age of the oldest",
        "timeseries",
        "short",
        [
            ("{{app}} pending", f"sum by (app) (phoneseller_outbox_pending_events{{{APPS}}})"),
            (
                "{{app}} oldest (s)",
                f"max by (app) (phoneseller_outbox_oldest_event_age_seconds{{{APPS}}})",
            ),
        ],
        12,
    ),
    (
        "JetStream consumer lag (not yet delivered)",
        "timeseries",
        "short",
        [("{{consumer}}", JETSTREAM_LAG)],
        12,
    ),
    (
        "Consumers: delivered, not yet acknowledged",
        "timeseries",
        "short",
        [("{{consumer}}", "max by (consumer) (phoneseller_consumer_ack_pending_events)")],
        12,
    ),
    (
        "Events published and handled",
        "timeseries",
        "ops",
        [
            (
                "published {{type}}",
                f"sum by (type) (rate(phoneseller_events_published_total[{RATE}]))",
            ),
            (
                "handled by {{consumer}}",
                f"sum by (consumer) (rate(phoneseller_events_handled_total[{RATE}]))",
            ),
        ],
        12,
    ),
    (
        "Dead letters (parked events)",
        "stat",
        "short",
        [("{{app}}", f"sum by (app) (phoneseller_dead_letter_events{{{APPS}}})")],
        6,
    ),
    (
        "Clawback fallbacks (cancels refused, PROMOTION_UNAVAILABLE)",
        "stat",
        "short",
        [
            (
                "refused",
                'sum(increase(phoneseller_clawbacks_refused_total{reason="PROMOTION_UNAVAILABLE"}'
                "[$__range]))",
            )
        ],
        6,
    ),
    (
        "Clawback circuit breaker overflows",
        "timeseries",
        "reqps",
        [("{{cluster}}", CLAWBACK_OVERFLOW)],
        12,
    ),
]


def panel(
    number: int, x: int, y: int, spec: tuple[str, str, str, list[tuple[str, str]], int]
) -> dict[str, Any]:
    title, kind, unit, queries, width = spec
    return {
        "id": number,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expression,
                "legendFormat": legend,
            }
            for index, (legend, expression) in enumerate(queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    panels, x, y = [], 0, 0
    for number, spec in enumerate(PANELS, start=1):
        width = spec[4]
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(number, x, y, spec))
        x += width
    return {
        "uid": "phoneseller",
        "title": "phoneseller",
        "description": "The saga, the event flow (outbox, JetStream, consumers) and the RPCs of "
        "the phoneseller services, beside Istio's own dashboards (docs/observability.md).",
        "tags": ["phoneseller", "istio", "nats"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "app",
                    "type": "query",
                    "label": "service",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {
                        "query": "label_values(grpc_server_handled_total, app)",
                        "refId": "app",
                    },
                    "definition": "label_values(grpc_server_handled_total, app)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args(argv)
    if args.check:
        if not OUT.is_file() or OUT.read_text() != render():
            print(f"{OUT} is out of date: run python scripts/gen_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
