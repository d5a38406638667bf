"""Outgoing gRPC channels, and the metadata that carries the caller's trace context and
correlation id."""

from __future__ import annotations

import json

import grpc

from services.kit import context, tracing

# Retries belong to the mesh (Envoy / Istio), not to the client: retrying in both multiplies
# attempts. The client only keeps its connection healthy and fails fast when nothing listens.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "waitForReady": False}]})


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's trace context and correlation id, for an outgoing call's metadata.

    Passed by the callers themselves rather than by a client interceptor: grpc.aio wraps every
    intercepted call in a second call object (measured here: ~20 of ~220 µs of the client's
    CPU per call). With tracing on, OpenTelemetry's client interceptor (`channel`) writes the
    trace headers of the call's own span and this adds the rest (services/kit/context.py).
    """
    return context.outgoing_headers()


def channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to a peer (mTLS is the mesh's job) with context propagation."""
    return grpc.aio.insecure_channel(
        address,
        # None when tracing is off: no interceptor at all on the call path.
        interceptors=tracing.client_interceptors(),
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
