"""The trace context with tracing off (the default): what comes in goes out unchanged, so the
spans a mesh records keep parents that exist (services/kit/context.py, docs/observability.md)."""

from __future__ import annotations

import json
import logging

from services.kit import context, logs

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ISTIO_HEADERS = {
    "traceparent": CALLER,
    "tracestate": "congo=t61rcWkgMzE",
    "x-request-id": "2f9c7a1e-1d1b-4c2e-9a77-3b0b1a0c9d10",
    "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
    "x-b3-spanid": "b7ad6b7169203331",
    "x-b3-sampled": "1",
    "authorization": "Bearer secret",
}


def test_tracing_is_off_without_an_endpoint() -> None:
    assert not context.tracing()


def test_an_incoming_context_is_passed_on_as_it_came() -> None:
    with context.bound(order_id="o-1", parent=CALLER, incoming=ISTIO_HEADERS):
        headers = dict(context.outgoing_headers())
        # The caller's span stays the parent: no span id made up for a span nobody records.
        assert headers["traceparent"] == CALLER
        for name in ("tracestate", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"):
            assert headers[name] == ISTIO_HEADERS[name], name
        assert headers["x-correlation-id"] == "o-1"
        # Only the trace headers travel on, never the caller's credentials.
        assert "authorization" not in headers
        assert context.current() == (CALLER, "congo=t61rcWkgMzE")
        assert context.trace_id() == "0af7651916cd43dd8448eb211c80319c"
        assert context.span_id() == "b7ad6b7169203331"
    assert context.outgoing_headers() == ()


def test_a_call_without_a_trace_gets_an_unsampled_one_for_its_logs() -> None:
    with context.bound(parent="", incoming={}):
        made_up = context.current()[0]
        assert context.valid_traceparent(made_up)
        # Flagged not sampled: no tracer downstream records spans under a parent nobody did.
        assert made_up.endswith("-00")


def test_an_invalid_traceparent_is_replaced() -> None:
    with context.bound(parent="00-zz-yy-01"):
        assert context.valid_traceparent(context.current()[0])


def test_log_lines_carry_the_trace_and_span_ids() -> None:
    formatter = logs.JsonFormatter("order")
    record = logging.makeLogRecord({"msg": "order placed", "levelname": "INFO"})
    with context.bound(order_id="o-2", parent=CALLER):
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "b7ad6b7169203331"
    assert line["order_id"] == "o-2"
