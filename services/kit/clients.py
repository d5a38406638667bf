"""Outgoing gRPC channels that carry the trace context and correlation id of the caller."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.kit import context

# Retries belong to the mesh (Envoy / Istio), not to the client: retrying in both multiplies
# attempts. The client only keeps its connection healthy and fails fast when nothing listens.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "waitForReady": False}]})


class _ContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = list(client_call_details.metadata or ())
        metadata.append(("traceparent", context.child_traceparent()))
        if order_id := context.correlation_id.get():
            metadata.append(("x-correlation-id", order_id))
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to a peer (mTLS is the mesh's job) with context propagation."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=[_ContextInterceptor()],
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
