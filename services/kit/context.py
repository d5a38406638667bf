"""Correlation and trace context carried through calls, events and log lines.

The order id is the correlation id of the whole saga; the W3C trace context ties the spans of
one request together across services. Both live in context variables so every log line and
every outgoing call or event picks them up without being passed around by hand.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
traceparent: ContextVar[str] = ContextVar("traceparent", default="")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent(trace_id: str | None = None) -> str:
    """A fresh W3C traceparent (version 00, sampled) in the given or a new trace."""
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def valid_traceparent(value: str) -> bool:
    return bool(_TRACEPARENT.match(value))


def trace_id() -> str:
    """The trace id of the current context, or an empty string outside a trace."""
    match = _TRACEPARENT.match(traceparent.get())
    return match.group(1) if match else ""


def child_traceparent() -> str:
    """The traceparent to send on an outgoing call or event: same trace, new span."""
    return new_traceparent(trace_id() or None)


@contextmanager
def bound(*, order_id: str | None = None, parent: str | None = None) -> Iterator[None]:
    """Bind the correlation id and/or trace context for the duration of a block."""
    tokens = []
    if order_id is not None:
        tokens.append((correlation_id, correlation_id.set(order_id)))
    if parent is not None:
        value = parent if valid_traceparent(parent) else new_traceparent()
        tokens.append((traceparent, traceparent.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
