"""A server interceptor that wraps each method's handler once, on its first call.

gRPC asks an interceptor for the handler of every call; building the wrapper each time costs
a closure and a handler object per call. The services' interceptors (services/kit/server.py's
RequestInterceptor, services/kit/metrics.py's RpcMetricsInterceptor) wrap unary methods and
keep the result here.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["WrappingInterceptor"]


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Calls `wrap(method, handler)` the first time a method is called and reuses its result."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            wrapped = self.wrap(method, await continuation(details))
            self._handlers[method] = wrapped
        return wrapped

    def wrap(self, method: str, handler: Any) -> Any:
        """The handler to serve `method` with (`handler` itself to leave it alone)."""
        raise NotImplementedError
