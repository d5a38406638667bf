"""The shipped dashboard is what scripts/gen_dashboard.py writes, and covers what the issue
asks of it (its queries are evaluated on a real Prometheus in test_metrics.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.observability import dashboard

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_dashboard.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_dashboard", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_dashboard"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_generated() -> None:
    assert dashboard.DASHBOARD.read_text() == generator().render()


def test_the_dashboard_shows_what_operators_need() -> None:
    expressions = " ".join(expr for _, expr in dashboard.queries())
    for series in (
        "phoneseller_orders_total",  # the saga funnel and rate
        "grpc_server_handling_seconds_bucket",  # PlaceOrder / CancelOrder latency
        "grpc_server_handled_total",  # error rates per service
        "phoneseller_outbox_pending_events",
        "phoneseller_outbox_oldest_event_age_seconds",
        "consumer_num_pending",  # JetStream's lag, from the NATS exporter
        "phoneseller_consumer_pending_events",  # the same, as the services see it
        "phoneseller_dead_letter_events",
        "phoneseller_clawbacks_refused_total",
        "envoy_cluster_upstream_rq_pending_overflow",  # the clawback breaker's overflows
    ):
        assert series in expressions, series
