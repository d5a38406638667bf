"""Latencies in an HDR histogram, and failed calls grouped by what they said.

An HDR histogram keeps every value to 3 significant figures in fixed memory, so p99 and max of
hundreds of thousands of calls cost nothing to keep and are exact to 0.1 %; a list of floats
would grow with the soak.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

#: Values are kept in microseconds, from 1 µs to 10 minutes, to 3 significant figures.
HIGHEST_MICROSECONDS = 600_000_000
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0)


class Latency:
    """One histogram of call or saga durations."""

    def __init__(self) -> None:
        self._histogram: Any = HdrHistogram(1, HIGHEST_MICROSECONDS, SIGNIFICANT_FIGURES)

    def record(self, seconds: float) -> None:
        microseconds = round(seconds * 1_000_000)
        self._histogram.record_value(min(max(microseconds, 1), HIGHEST_MICROSECONDS))

    def add(self, other: Latency) -> None:
        self._histogram.add(other._histogram)

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def percentile_ms(self, percentile: float) -> float | None:
        if not self.count:
            return None
        return float(self._histogram.get_value_at_percentile(percentile)) / 1000

    def max_ms(self) -> float | None:
        return float(self._histogram.get_max_value()) / 1000 if self.count else None

    def summary(self) -> dict[str, float | int | None]:
        """count, p50_ms, p90_ms, p99_ms and max_ms (None when nothing was recorded)."""
        figures: dict[str, float | int | None] = {"count": self.count}
        for percentile in PERCENTILES:
            figures[f"p{percentile:g}_ms"] = self.percentile_ms(percentile)
        figures["max_ms"] = self.max_ms()
        return figures


@dataclass(frozen=True, order=True)
class ErrorKind:
    """What a failed call said: the method, the gRPC code and the ErrorInfo reason."""

    method: str
    code: str
    #: ErrorInfo.reason, or "-" when the status carried none (e.g. an error Envoy made up).
    reason: str


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason in the error's grpc-status-details-bin, or "-" if there is none."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        # The details' code disagrees with the call's: someone on the way rewrote the status.
        return "(details disagree with code)"
    if status is None:
        return "-"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason) or "-"
    return "-"


class ErrorTally:
    """Failed calls counted per ErrorKind, with the first message of each kind as an example."""

    def __init__(self) -> None:
        self.counts: Counter[ErrorKind] = Counter()
        self.examples: dict[ErrorKind, str] = {}

    def record(self, method: str, error: grpc.aio.AioRpcError) -> None:
        kind = ErrorKind(method, error.code().name, error_reason(error))
        self.counts[kind] += 1
        self.examples.setdefault(kind, str(error.details() or "")[:160])

    def add(self, other: ErrorTally) -> None:
        self.counts.update(other.counts)
        for kind, example in other.examples.items():
            self.examples.setdefault(kind, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rows(self) -> list[dict[str, str | int]]:
        """One row per kind, the most frequent first."""
        return [
            {
                "method": kind.method,
                "code": kind.code,
                "reason": kind.reason,
                "count": count,
                "example": self.examples[kind],
            }
            for kind, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        ]
