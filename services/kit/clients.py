"""Outgoing gRPC channels, and the metadata that carries the caller's trace context and
correlation id."""

from __future__ import annotations

import json

import grpc

from services.kit import context

# Retries belong to the mesh (Envoy / Istio), not to the client: retrying in both multiplies
# attempts. The client only keeps its connection healthy and fails fast when nothing listens.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "waitForReady": False}]})


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's trace context and correlation id, for an outgoing call's metadata.

    Passed by the callers themselves rather than by a client interceptor: grpc.aio wraps every
    intercepted call in a second call object (measured here: ~20 of ~220 µs of the client's
    CPU per call).
    """
    if order_id := context.correlation_id.get():
        return (("traceparent", context.child_traceparent()), ("x-correlation-id", order_id))
    return (("traceparent", context.child_traceparent()),)


def channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to a peer (mTLS is the mesh's job) with context propagation."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 30_000),
            # A restarted peer is back within a second; don't wait out a long backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ],
    )
