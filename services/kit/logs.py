"""Structured JSON logs, one object per line, carrying the correlation id and the trace and span
ids of the active span (tracing on) or of the caller's (off; services/kit/context.py)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from services.kit import context

# Attributes every LogRecord has; anything else passed through `extra=` is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats records as JSON with time (UTC), level, logger, message and context fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if order_id := context.correlation_id.get():
            entry["order_id"] = order_id
        traceparent = context.current()[0]
        if len(traceparent) == 55:  # 00-<trace id>-<span id>-<flags>
            entry["trace_id"] = traceparent[3:35]
            entry["span_id"] = traceparent[36:52]
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The NATS client logs every reconnect attempt at ERROR; our event-flow health says it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
