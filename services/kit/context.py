"""Correlation and trace context carried through calls, events and log lines.

The order id is the correlation id of the whole saga; the trace context ties the spans of one
request together across services and NATS hops. Both live in context variables, so every log
line and every outgoing call or event picks them up without being passed around by hand.

Two ways, one interface (docs/observability.md):

- **Tracing off** (no OTLP endpoint, the default): nothing is recorded, and the context is
  passed on *as it came*: the incoming `traceparent`, `tracestate`, B3 headers and
  `x-request-id` are forwarded unchanged, so the spans a mesh records (Istio's sidecars, the
  local Envoy) keep parents that exist, and the logs of every service share the trace id. A
  call that arrives without a `traceparent` gets one made up for its logs, flagged not sampled
  (`-00`), so that no tracer downstream records spans under a parent nobody recorded.
- **Tracing on** (`services.kit.tracing` configured): the active OpenTelemetry span is the
  context; `tracing` registers `_active` here and OpenTelemetry's propagators write the headers.
  Only `x-request-id` (Istio's request id, which no propagator carries) is forwarded by hand.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
#: The W3C traceparent of the current work when tracing is off (incoming, or made up).
traceparent: ContextVar[str] = ContextVar("traceparent", default="")
#: Headers passed on verbatim to outgoing calls (see FORWARDED and FORWARDED_WHEN_OFF).
forwarded: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("forwarded", default=())

#: Forwarded on every call: Istio's request id, which ties the proxies' access logs together.
FORWARDED = ("x-request-id",)
#: Forwarded as they came only while tracing is off; with tracing on the propagators write
#: them for the active span. Istio's tracing docs list these for applications to pass on.
FORWARDED_WHEN_OFF = (
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
)

#: Set by services.kit.tracing while spans are recorded: (traceparent, tracestate) of the
#: active span, or None outside any span.
_active: Callable[[], tuple[str, str] | None] | None = None

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent(trace_id: str | None = None, *, sampled: bool = True) -> str:
    """A fresh W3C traceparent (version 00) in the given or a new trace."""
    flags = "01" if sampled else "00"
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"


def valid_traceparent(value: str) -> bool:
    return bool(_TRACEPARENT.match(value))


def tracing() -> bool:
    """Whether spans are recorded (an OTLP endpoint is configured)."""
    return _active is not None


def current() -> tuple[str, str]:
    """(traceparent, tracestate) of the current work, to store with an event or pass on."""
    if _active is not None:
        return _active() or ("", "")
    state = ""
    for name, value in forwarded.get():
        if name == "tracestate":
            state = value
    return traceparent.get(), state


def trace_id() -> str:
    """The trace id of the current context, or an empty string outside a trace."""
    match = _TRACEPARENT.match(current()[0])
    return match.group(1) if match else ""


def span_id() -> str:
    """The id of the active span (tracing on) or of the caller's span (tracing off)."""
    match = _TRACEPARENT.match(current()[0])
    return match.group(2) if match else ""


def outgoing_headers() -> tuple[tuple[str, str], ...]:
    """The context for an outgoing call's metadata; with tracing on the OpenTelemetry client
    interceptor adds the trace headers itself."""
    headers = forwarded.get()
    if _active is None and (parent := traceparent.get()):
        headers = (("traceparent", parent), *headers)
    if order_id := correlation_id.get():
        headers = (*headers, ("x-correlation-id", order_id))
    return headers


@contextmanager
def bound(
    *,
    order_id: str | None = None,
    parent: str | None = None,
    incoming: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Bind the correlation id and/or trace context for the duration of a block.

    `parent` is the traceparent that came with the work (an empty string: none came, make one
    up for the logs); `incoming`, the call's metadata, gives the headers to forward.
    """
    tokens: list[tuple[ContextVar[Any], Token[Any]]] = []
    if order_id is not None:
        tokens.append((correlation_id, correlation_id.set(order_id)))
    if parent is not None and _active is None:
        own = parent if valid_traceparent(parent) else new_traceparent(sampled=False)
        tokens.append((traceparent, traceparent.set(own)))
    if incoming is not None:
        names = FORWARDED if _active is not None else FORWARDED + FORWARDED_WHEN_OFF
        passed = tuple((name, value) for name in names if (value := incoming.get(name)))
        tokens.append((forwarded, forwarded.set(passed)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
