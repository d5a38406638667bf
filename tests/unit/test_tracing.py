"""Spans across a NATS hop, recorded by the real SDK and exported over OTLP/gRPC to a real
receiver (tests/support/otlp.py): the relay's PRODUCER span is the child of the context stored
with the event, each event's CONSUMER span the child of its producer's, and a batch handled at
once runs in a span linked to every producer (services/kit/tracing.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from mesh.envoy import render_envoy_config
from mesh.policy import load_policy
from mesh.topology import default_topology
from mesh.tracing import sampling_percent, with_tracing
from services.kit import context, tracing
from services.kit.events import Envelope
from stack.supervisor import VALUES
from tests.support.otlp import OtlpReceiver, ReceivedSpan

STORED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(number: int) -> Envelope:
    return Envelope(
        event_id=f"e-{number}",
        event_type="phoneseller.order.v1.Ordered",
        subject="phoneseller.order.Ordered",
        order_id=f"o-{number}",
        customer_id="c-1",
        occurred_at=datetime.now(UTC),
        traceparent=STORED,
        payload=b"",
    )


def test_the_endpoint_comes_from_the_standard_variables() -> None:
    assert tracing.endpoint({}) == ""
    assert tracing.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == "http://c:4317"
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317",
    }
    assert tracing.endpoint(both) == "http://t:4317"
    assert tracing.endpoint({**both, "OTEL_SDK_DISABLED": "true"}) == ""
    assert tracing.endpoint({**both, "OTEL_TRACES_EXPORTER": "none"}) == ""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": running.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert tracing.configure("unit")
            try:
                yield running
            finally:
                tracing.shutdown()  # flushes: every span ended is exported
    assert not context.tracing()


def received(receiver: OtlpReceiver, count: int) -> list[ReceivedSpan]:
    """What the receiver got; shutdown() exports synchronously, so everything is in."""
    spans = receiver.spans
    assert len(spans) >= count, [s.name for s in spans]
    return spans


def test_a_hop_and_a_batch_are_one_tree_with_links(receiver: OtlpReceiver) -> None:
    with tracing.producing([envelope(1), envelope(2)]) as producing:
        sent = producing.envelopes
    # What goes on the wire names the producer's span, in the stored context's trace.
    assert all(e.traceparent.split("-")[1] == STORED.split("-")[1] for e in sent)
    assert all(e.traceparent != STORED for e in sent)
    with tracing.consuming_batch("customer", sent):
        # Log lines and the events the batch causes carry the batch span's context.
        assert context.trace_id() and context.span_id()
    with tracing.consuming("store", dataclasses.replace(sent[0])):
        during = context.current()[0]
    tracing.shutdown()
    spans = received(receiver, 6)
    by_id = {s.span_id: s for s in spans}
    producers = [s for s in spans if s.kind == "PRODUCER"]
    assert len(producers) == 2
    for producer in producers:
        assert producer.parent_span_id == STORED.split("-")[2]  # the context stored with it
        assert producer.service == "unit"
    consumers = [s for s in spans if s.kind == "CONSUMER" and s.name.startswith("process phone")]
    assert len(consumers) == 3
    for consumer in consumers:
        assert by_id[consumer.parent_span_id].kind == "PRODUCER"
    (batch,) = [s for s in spans if s.name == "process batch customer"]
    assert {span_id for _, span_id in batch.links} == {p.span_id for p in producers}
    store = next(s for s in consumers if s.attributes["messaging.consumer.group.name"] == "store")
    assert during.split("-")[2] == store.span_id


def test_with_tracing_on_only_the_request_id_is_forwarded_by_hand(
    receiver: OtlpReceiver,
) -> None:
    incoming = {"x-request-id": "r-1", "x-b3-traceid": "0" * 32, "tracestate": "a=b"}
    with context.bound(order_id="o-1", parent="", incoming=incoming):
        # The propagators write the trace headers of the call's own span.
        assert dict(context.outgoing_headers()) == {
            "x-request-id": "r-1",
            "x-correlation-id": "o-1",
        }


def test_the_proxies_sample_new_traces_as_the_services_do() -> None:
    """The local Envoy starts traces at the services' ratio, so that sampling 1 % makes the
    whole tree 1 %, not only the services' part of it."""
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    assert sampling_percent(ratio) == 1.0
    assert sampling_percent({}) == 100.0
    assert sampling_percent({"OTEL_TRACES_SAMPLER": "always_on"}) == 100.0
    assert sampling_percent({**ratio, "OTEL_TRACES_SAMPLER_ARG": "7"}) == 100.0
    config = render_envoy_config(load_policy(VALUES), default_topology(), None)
    traced = with_tracing(config, "http://127.0.0.1:4317", sampling_percent(ratio))
    samplings = [
        f["typed_config"]["tracing"]["random_sampling"]["value"]
        for listener in traced["static_resources"]["listeners"]
        for chain in listener.get("filter_chains", [])
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]
    assert samplings and set(samplings) == {1.0}
