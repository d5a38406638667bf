"""The history: every operation as the client that made it saw it, one JSON line each.

As in Jepsen, an operation is invoked, then ends ok (the answer is known), failed (the
service said no and why: nothing was done by that attempt) or unknown (the deadline passed
while the answers were "not now" or none at all: it may or may not have taken effect). A
careful client retries an operation with the same request_id, so one operation may hold
several failed attempts before its end; they are kept, because an attempt that timed out
makes even a later definite "no" ambiguous about what happened before it.

Times are seconds since the start of the load (time.monotonic based), so the history, the
fault log and the timeline share one clock.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO


class Kind(enum.StrEnum):
    """What the client asked for."""

    PLACE = "place"
    CANCEL = "cancel"
    #: GetPointBalance: a read, so that the history observes the ledger while faults run.
    BALANCE = "balance"


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


#: Codes after which the client cannot know whether the attempt took effect: the service
#: said "not now" (UNAVAILABLE, which for CancelOrder may still finish by itself) or nobody
#: answered in time. The careful client retries the first two; the others end the operation.
AMBIGUOUS_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL", "CANCELLED"}
)
#: What the careful client retries with the same request_id (AIP-194).
RETRIED_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
#: The ErrorInfo reason of a status that carried none (an error Envoy or gRPC made itself).
NO_REASON = "-"


@dataclass(frozen=True)
class Attempt:
    """One failed attempt of an operation."""

    at: float
    code: str
    reason: str = NO_REASON
    #: What RetryInfo asked for, in seconds (None when the status had no RetryInfo).
    retry_delay: float | None = None

    @property
    def ambiguous(self) -> bool:
        return self.code in AMBIGUOUS_CODES


@dataclass
class Operation:
    """One operation of one client, from invocation to its end."""

    client: int
    customer: str
    kind: Kind
    #: PlaceOrder's and CancelOrder's idempotency key; the same for every attempt.
    request_id: str
    invoked: float
    outcome: Outcome = Outcome.UNKNOWN
    completed: float | None = None
    #: The order: asked to cancel, or answered by PlaceOrder ("" while unknown).
    order_id: str = ""
    #: PlaceOrder's amount (unit price × quantity), known before any answer.
    amount: int = 0
    #: The last failure's code and reason (a failed or unknown operation).
    code: str = ""
    reason: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    #: What the service answered: the order's fields, or {"balance": …} for a read.
    answer: dict[str, Any] | None = None

    @property
    def ambiguous(self) -> bool:
        """Might have taken effect although it did not end ok."""
        if self.outcome is Outcome.OK:
            return False
        return self.outcome is Outcome.UNKNOWN or any(a.ambiguous for a in self.attempts)

    @property
    def latency(self) -> float | None:
        return None if self.completed is None else self.completed - self.invoked

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Operation:
        values = dict(data)
        values["kind"] = Kind(values["kind"])
        values["outcome"] = Outcome(values["outcome"])
        values["attempts"] = [Attempt(**a) for a in values.get("attempts", [])]
        return cls(**values)


class HistoryWriter:
    """Appends each ended operation to history.jsonl as it ends (`tail -f` shows the run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.operations: list[Operation] = []

    def record(self, operation: Operation) -> None:
        self.operations.append(operation)
        self._file.write(json.dumps(operation.to_json(), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def load_history(path: Path) -> list[Operation]:
    with path.open(encoding="utf-8") as lines:
        return [Operation.from_json(json.loads(line)) for line in lines if line.strip()]


def by_kind(operations: Iterable[Operation], kind: Kind) -> Iterator[Operation]:
    return (op for op in operations if op.kind is kind)
