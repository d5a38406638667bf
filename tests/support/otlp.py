"""A real OTLP/gRPC trace receiver: the collector's TraceService, served on a free port.

Tests point the services and Envoy at it (`OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`) and
read back what they exported; `python -m tests.support.otlp --port N` runs it on its own as a
sink that only counts (what `make bench` measures tracing against, docs/observability.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.ports import free_port

#: OTLP's span kinds by number, as OpenTelemetry names them.
KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, Any] = field(hash=False, compare=False)
    start_ns: int = 0
    error: bool = False


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterable[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    service=service,
                    name=span.name,
                    kind=KINDS.get(span.kind, str(span.kind)),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    start_ns=span.start_time_unix_nano,
                    error=span.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
                )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver.receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects every span exported to it (or, with `keep=False`, only counts them)."""

    def __init__(self, port: int | None = None, *, keep: bool = True) -> None:
        self.port = port or free_port()
        self.keep = keep
        self.count = 0
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        if not self.keep:
            with self._lock:
                self.count += sum(
                    len(s.spans) for r in request.resource_spans for s in r.scope_spans
                )
            return
        received = list(spans_of(request))
        with self._lock:
            self._spans.extend(received)
            self.count += len(received)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        # opentelemetry-proto's generated gRPC module ships without type hints.
        register: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        register(_TraceService(self), server)
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="an OTLP/gRPC sink that counts spans")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with OtlpReceiver(args.port, keep=False) as receiver:
        print(f"OTLP/gRPC sink on {receiver.endpoint}", flush=True)
        last = time.monotonic()
        while not stop.wait(1.0):
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                print(f"{receiver.count} spans received", flush=True)
        print(f"{receiver.count} spans received in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
