"""Point grants and the points ledger. No I/O here.

A grant is the payback points of one order. Granting writes a GRANT ledger entry and clawing
back writes a REVERSAL entry of the opposite sign, so a cancelled order nets to zero and a
balance, the sum of a customer's entries, is never negative. A clawback may arrive before the
payment it undoes (the cancel raced ahead of the PayCompleted event): it then records a grant
that is already reversed, and the payment, when it comes, is granted and reversed at once.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from google.protobuf.message import Message
from phoneseller.promotion.v1 import events_pb2

from services.kit.clock import utcnow
from services.kit.events import new_event


class GrantStatus(enum.StrEnum):
    GRANTED = "GRANTED"
    REVERSED = "REVERSED"


class EntryKind(enum.StrEnum):
    GRANT = "GRANT"
    REVERSAL = "REVERSAL"


@dataclass(frozen=True)
class PointsRate:
    """Payback points are `percent` % of the amount paid, rounded down to whole points."""

    percent: int

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"points rate must be between 0 and 100 %, got {self.percent}")

    def points_for(self, amount: int) -> int:
        return max(amount, 0) * self.percent // 100


@dataclass(frozen=True)
class LedgerEntry:
    """One change to a customer's points: positive for a grant, negative for a reversal."""

    entry_id: str
    customer_id: str
    order_id: str
    kind: EntryKind
    points: int
    create_time: datetime

    @classmethod
    def new(
        cls, customer_id: str, order_id: str, kind: EntryKind, points: int, now: datetime
    ) -> LedgerEntry:
        return cls(str(uuid.uuid4()), customer_id, order_id, kind, points, now)


def balance(entries: Sequence[LedgerEntry]) -> int:
    """The sum of the entries; never negative, whatever the entries say."""
    return max(sum(entry.points for entry in entries), 0)


@dataclass
class PointGrant:
    """The payback points of one order (at most one grant per order)."""

    order_id: str
    customer_id: str
    points_granted: int
    points_reversed: int
    status: GrantStatus
    #: Whether the order's PayCompleted was applied; False for a clawback that came first.
    paid: bool
    create_time: datetime
    update_time: datetime
    #: Ledger entries this change adds, to be written with it.
    new_entries: list[LedgerEntry] = field(default_factory=list, compare=False, repr=False)
    #: Events this change causes, to be emitted with it.
    events: list[Message] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def for_payment(
        cls, order_id: str, customer_id: str, amount: int, rate: PointsRate
    ) -> PointGrant:
        """Grant the points of a paid order: a GRANT entry and PromoCompleted."""
        now = utcnow()
        points = rate.points_for(amount)
        grant = cls(
            order_id=order_id,
            customer_id=customer_id,
            points_granted=points,
            points_reversed=0,
            status=GrantStatus.GRANTED,
            paid=True,
            create_time=now,
            update_time=now,
        )
        grant._record_grant(points, now)
        return grant

    @classmethod
    def reversed_before_payment(cls, order_id: str, customer_id: str) -> PointGrant:
        """A clawback for an order not paid yet: REVERSED with 0 points, PromoCancelled(0).

        The later payment then grants and reverses at once (`with_payment`).
        """
        now = utcnow()
        grant = cls(
            order_id=order_id,
            customer_id=customer_id,
            points_granted=0,
            points_reversed=0,
            status=GrantStatus.REVERSED,
            paid=False,
            create_time=now,
            update_time=now,
        )
        grant.events.append(grant._cancelled_event(0))
        return grant

    def with_payment(self, customer_id: str, amount: int, rate: PointsRate) -> PointGrant:
        """Apply the order's payment to a grant that exists already.

        A grant that was paid already is returned as it is (the same payment seen again, or
        another event for the same order): one grant per order. A grant reversed before its
        payment is granted and reversed at once, so the order nets to zero.
        """
        if self.paid:
            return self
        now = utcnow()
        points = rate.points_for(amount)
        result = replace(
            self,
            customer_id=customer_id,
            points_granted=points,
            points_reversed=points,
            paid=True,
            update_time=now,
            new_entries=[],
            events=[],
        )
        result._record_grant(points, now)
        result._record_reversal(points, now)
        return result

    def clawed_back(self) -> PointGrant:
        """Reverse the points: a REVERSAL entry and PromoCancelled; already reversed: as is."""
        if self.status is GrantStatus.REVERSED:
            return self
        now = utcnow()
        result = replace(
            self,
            status=GrantStatus.REVERSED,
            points_reversed=self.points_granted,
            update_time=now,
            new_entries=[],
            events=[],
        )
        result._record_reversal(self.points_granted, now)
        return result

    def _record_grant(self, points: int, now: datetime) -> None:
        self.new_entries.append(
            LedgerEntry.new(self.customer_id, self.order_id, EntryKind.GRANT, points, now)
        )
        self.events.append(
            new_event(
                events_pb2.PromoCompleted,
                order_id=self.order_id,
                customer_id=self.customer_id,
                points=points,
            )
        )

    def _record_reversal(self, points: int, now: datetime) -> None:
        self.new_entries.append(
            LedgerEntry.new(self.customer_id, self.order_id, EntryKind.REVERSAL, -points, now)
        )
        self.events.append(self._cancelled_event(points))

    def _cancelled_event(self, points: int) -> events_pb2.PromoCancelled:
        return new_event(
            events_pb2.PromoCancelled,
            order_id=self.order_id,
            customer_id=self.customer_id,
            points_reversed=points,
        )
