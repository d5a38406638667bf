"""Payments in the service's database: the table, the repository and the unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    select,
    update,
)

from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_ignoring_conflicts, upsert
from services.kit.uow import ConcurrentUpdateError, Repository, UnitOfWork
from services.payment.domain import CancellationRequest, Payment, PaymentStatus

metadata = MetaData()

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(64), primary_key=True),
    # One payment per order: this is what makes Pay idempotent on the order id.
    Column("order_id", String(64), nullable=False, unique=True),
    Column("customer_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decline_reason", String(200), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

#: Cancels asked for and not ended yet (domain.CancellationRequest).
cancellations = Table(
    "cancellations",
    metadata,
    Column("payment_id", String(64), primary_key=True),
    Column("request_id", String(64), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
)

_GET = Statement(select(payments).where(payments.c.payment_id == bindparam("payment_id")))
_GET_FOR_UPDATE = Statement(
    select(payments).where(payments.c.payment_id == bindparam("payment_id")).with_for_update()
)
_FOR_ORDER = Statement(select(payments).where(payments.c.order_id == bindparam("order_id")))
# A second Pay for the same order (a retry through the mesh) inserts nothing.
_ADD = insert_ignoring_conflicts(payments, "order_id", returning="payment_id")
# Compare-and-set on the status: a payment changes only from the status it was read in.
_SAVE = Statement(
    update(payments)
    .where(
        payments.c.payment_id == bindparam("key"),
        payments.c.status == bindparam("expected"),
    )
    .values(status=bindparam("status"), update_time=bindparam("update_time"))
)


# Asked again (a client's retry): the request starts over, and a finisher that read the old
# one leaves it alone (it deletes only what it read, `requested_at` included).
_REQUEST_CANCEL = upsert(
    cancellations,
    "payment_id",
    update=("request_id", "requested_at", "attempts", "next_attempt_at"),
)
_DUE = Statement(
    select(cancellations)
    .where(cancellations.c.next_attempt_at <= bindparam("now"))
    .order_by(cancellations.c.next_attempt_at)
    .limit(bindparam("limit"))
)
_POSTPONE = Statement(
    update(cancellations)
    .where(
        cancellations.c.payment_id == bindparam("key"),
        cancellations.c.requested_at == bindparam("requested_at"),
    )
    .values(attempts=bindparam("attempts"), next_attempt_at=bindparam("next_attempt_at"))
)
_END = Statement(
    delete(cancellations).where(
        cancellations.c.payment_id == bindparam("payment_id"),
        cancellations.c.requested_at == bindparam("requested_at"),
    )
)
_END_ANY = Statement(
    delete(cancellations).where(cancellations.c.payment_id == bindparam("payment_id"))
)


def _payment(row: Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        amount=row["amount"],
        status=PaymentStatus(row["status"]),
        decline_reason=row["decline_reason"],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
    )


class PaymentRepository(Repository):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        #: The status each payment had when this unit of work read it (for `save`).
        self._read: dict[str, PaymentStatus] = {}

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        row = await self.session.row(_GET_FOR_UPDATE if for_update else _GET, payment_id=payment_id)
        return self._remember(_payment(row)) if row else None

    async def for_order(self, order_id: str) -> Payment | None:
        row = await self.session.row(_FOR_ORDER, order_id=order_id)
        return self._remember(_payment(row)) if row else None

    def _remember(self, payment: Payment) -> Payment:
        self._read[payment.payment_id] = payment.status
        return payment

    async def add(self, payment: Payment) -> bool:
        """Insert a new payment; False (nothing written) if its order has one already."""
        row = await self.session.row(
            _ADD,
            payment_id=payment.payment_id,
            order_id=payment.order_id,
            customer_id=payment.customer_id,
            amount=payment.amount,
            status=payment.status.value,
            decline_reason=payment.decline_reason,
            create_time=payment.create_time,
            update_time=payment.update_time,
        )
        if row is None:
            return False
        self._remember(payment)
        self._saved(payment)
        return True

    async def save(self, payment: Payment) -> None:
        """Write a changed payment read in this unit of work; raises ConcurrentUpdateError if
        another writer changed it since."""
        expected = self._read[payment.payment_id]
        changed = await self.session.execute(
            _SAVE,
            key=payment.payment_id,
            expected=expected.value,
            status=payment.status.value,
            update_time=payment.update_time,
        )
        if changed != 1:
            raise ConcurrentUpdateError(f"payment {payment.payment_id!r} changed concurrently")
        self._remember(payment)
        self._saved(payment)


def _cancellation(row: Row) -> CancellationRequest:
    return CancellationRequest(
        payment_id=row["payment_id"],
        request_id=row["request_id"],
        requested_at=as_utc(row["requested_at"]),
        attempts=row["attempts"],
        next_attempt_at=as_utc(row["next_attempt_at"]),
    )


class CancellationRepository(Repository):
    """Cancels asked for and not ended yet. No events: they only steer the finisher."""

    async def save(self, request: CancellationRequest) -> None:
        """Record a new request, or replace the payment's earlier one (asked again)."""
        await self.session.execute(
            _REQUEST_CANCEL,
            payment_id=request.payment_id,
            request_id=request.request_id,
            requested_at=request.requested_at,
            attempts=request.attempts,
            next_attempt_at=request.next_attempt_at,
        )

    async def postpone(self, request: CancellationRequest) -> None:
        """Write a postponed request, unless it was asked again meanwhile."""
        await self.session.execute(
            _POSTPONE,
            key=request.payment_id,
            requested_at=request.requested_at,
            attempts=request.attempts,
            next_attempt_at=request.next_attempt_at,
        )

    async def due(self, now: datetime, limit: int) -> list[CancellationRequest]:
        return [_cancellation(row) for row in await self.session.rows(_DUE, now=now, limit=limit)]

    async def end(self, request: CancellationRequest) -> bool:
        """Forget this request (not one asked again since); False if it changed meanwhile."""
        ended = await self.session.execute(
            _END, payment_id=request.payment_id, requested_at=request.requested_at
        )
        return ended == 1

    async def end_any(self, payment_id: str) -> None:
        """Forget the payment's request, whichever it is (the cancel is done)."""
        await self.session.execute(_END_ANY, payment_id=payment_id)


class PaymentUnitOfWork(UnitOfWork):
    payments: PaymentRepository
    cancellations: CancellationRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.payments = PaymentRepository(session)
        self.cancellations = CancellationRepository(session)
        return (self.payments, self.cancellations)
